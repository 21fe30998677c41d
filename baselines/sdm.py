"""Sparse distributed memory of Kanerva (1988), autoassociative, with hard locations sized to the budget.

Rule: M hard locations with fixed random binary addresses a_m ∈ {0, 1}^D (uniform bits from
a CPU generator seeded with `seed` at construction: they are part of the model, like a
network's weights, not of the written state) and a counter vector c_m ∈ R^D each.
- write: every pattern x (its own address) adds its ±1 coding 2x - 1 to the counters of
  every location within Hamming distance `radius` of it: c_m += [d(a_m, x) <= r] (2x - 1).
- read: the distance of a query to an address is measured on the query's known bits only
  and scaled to the full width, d = D / k · #{known j: a_mj != q_j} (k known bits); the
  counters of the locations with d <= r are summed, s = Σ_m [d <= r] c_m, and each erased
  bit is read as 1 where s > 0, 0 where s < 0 and 0.5 (undecided, an error) where s = 0,
  which is also what a query that activates no location gets. Known bits are returned as
  given (under bit flips, where `spec.clamp_known` is False, every bit is read). A query with
  no known bit is at distance 0 from every location.

The default radius is the smallest r at which M · P[Binomial(D, 1/2) <= r] >= 4, i.e. a
random pattern activates about four locations on average (r = 55 at Table 1: 4.3 of 64).
Reading measures the distance on the 64 known bits only, which widens its spread, so a
query activates about 8 locations, a few of them among those its pattern was written to.

Protocol: binary patterns (B, N, *S) in {0, 1} are flattened, so Omniglot images are
accepted; non-binary tasks are refused. Reading draws no random numbers.

Budget: the state is the counters, M × D float32 values per episode, with M = floor(budget
/ D) (64 at Table 1: 8192 of 8256 values): memory_floats = M * D whatever N is. Every written
pattern is kept, superposed in the counters; nothing is dropped when N * D exceeds the budget.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from membench.budget import check_whole_patterns
from membench.errors import MembenchError
from membench.interface import AssociativeMemory, TaskSpec

MEAN_ACTIVATIONS = 4  # the default radius activates about this many locations for a random pattern


def default_radius(dim: int, num_locations: int) -> int:
    """Smallest r with num_locations * P[Binomial(dim, 1/2) <= r] >= MEAN_ACTIVATIONS (capped at dim)."""
    below = 0
    for radius in range(dim + 1):
        below += math.comb(dim, radius)
        if num_locations * below >= MEAN_ACTIVATIONS * 2**dim:
            return radius
    return dim


class SparseDistributedMemory(AssociativeMemory):
    """Kanerva's SDM: fixed random addresses (model), counters (state), hard-radius activation."""

    name = "sparse_distributed_memory"

    def __init__(self, spec: TaskSpec, num_locations: int, radius: int | None = None, seed: int = 0):
        super().__init__()
        check_whole_patterns(self.name, num_locations, spec, option="num_locations", slot="counter vector")
        if not spec.binary:
            raise MembenchError(f"{self.name} takes binary patterns (addresses are bit strings); "
                                "this task's patterns are real-valued")
        dim = spec.pattern_size
        if radius is None:
            radius = default_radius(dim, num_locations)
        if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= dim:
            raise MembenchError(f"{self.name}: radius={radius!r} must be an integer in [0, {dim}]")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise MembenchError(f"{self.name}: seed={seed!r} must be a non-negative integer")
        self.spec, self.num_locations, self.radius, self.seed = spec, num_locations, radius, seed
        generator = torch.Generator().manual_seed(seed)
        bits = torch.randint(0, 2, (num_locations, dim), generator=generator)
        self.register_buffer("addresses", 2.0 * bits - 1.0)  # (M, D) in ±1 coding

    @classmethod
    def from_spec(cls, spec: TaskSpec, budget: int, preset: str = "quick",
                  **options: Any) -> "SparseDistributedMemory":
        """As many hard locations as `budget` float32 values hold, num_locations = budget // D (or the option's)."""
        return cls(spec, **{"num_locations": budget // spec.pattern_size, **options})

    def memory_floats(self, spec: TaskSpec) -> int:
        return self.num_locations * spec.pattern_size

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, N, *S) in {0, 1} -> counters (B, M, D) float32."""
        spins = 2.0 * patterns.flatten(2) - 1.0                              # (B, N, D)
        mismatches = (spins.shape[-1] - spins @ self.addresses.T) / 2.0     # (B, N, M) Hamming distances
        active = (mismatches <= self.radius).to(spins.dtype)                # (B, N, M)
        return active.transpose(1, 2) @ spins                               # (B, M, D)

    def read(self, counters: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """counters (B, M, D), queries (B, Q, *S) -> retrievals (B, Q, *S) in {0, 0.5, 1}, known bits clamped."""
        flat = queries.flatten(2)                                           # (B, Q, D)
        known = flat != self.spec.fill_value
        spins = torch.where(known, 2.0 * flat - 1.0, torch.zeros_like(flat))
        num_known = known.sum(-1, keepdim=True).to(flat.dtype)             # (B, Q, 1)
        mismatches = (num_known - spins @ self.addresses.T) / 2.0           # (B, Q, M) on known bits
        # scaled distance D / k * mismatches <= r, compared without division (exact on integers)
        active = (mismatches * flat.shape[-1] <= self.radius * num_known).to(flat.dtype)
        sums = active @ counters                                            # (B, Q, D)
        clamped = known if self.spec.clamp_known else torch.zeros_like(known)  # bit flips: every bit is read
        return torch.where(clamped, flat, (sums.sign() + 1.0) / 2.0).reshape(queries.shape)

    def config(self) -> dict[str, Any]:
        return {"num_locations": self.num_locations, "radius": self.radius, "seed": self.seed}
