"""Dense associative memory of Krotov & Hopfield (2016), read by clamped asynchronous updates.

Rule: with the stored patterns ξ_μ in ±1 coding (μ = 1..K) and a state σ ∈ {-1, 0, +1}^D,
the energy is

    E(σ) = -Σ_μ F(ξ_μ · σ)

with an interaction function F: the rectified polynomial F(x) = max(x, 0)^n of Krotov &
Hopfield (`interaction="polynomial"`, n = `degree`, default 3; without the rectification n = 2
is the classical Hebbian network's energy), or F(x) = exp(x) (`interaction="exp"`,
the exponential form of Demircigil et al. 2017). A unit i is set to the sign that gives
the lower energy with every other unit held fixed,

    σ_i <- sign( Σ_μ [F(ξ_μi + a_μ) - F(-ξ_μi + a_μ)] ),   a_μ = Σ_{j≠i} ξ_μj σ_j,

and keeps its value when the two energies are equal. Energy gaps are computed in float64:
for the polynomial with degree n <= 6 at D = 128 every term and sum is an integer below
2^53, so equal energies are detected exactly. For F = exp the bracket is
2 sinh(1) ξ_μi exp(a_μ), so the sign is that of Σ_c (Σ_{μ: a_μ = c} ξ_μi) exp(c - max a):
the overlaps a_μ are integers, and the ξ_μi are summed per overlap value first, so that
opposite terms cancel exactly (equal energies give exactly 0) and nothing overflows.

Protocol (that of `baselines/hopfield.py`): erased query entries start at 0 and only they
move; known bits stay clamped (under bit flips, where `spec.clamp_known` is False, every unit
is free). Each sweep visits the erased units of every query in a fresh
random order (drawn on the CPU from torch's global generator, so devices agree); sweeps
repeat until one changes no unit, at most `max_sweeps` (100). An erased unit that never
moves stays at 0 and is returned as 0.5 (an error). Patterns (B, N, *S) are flattened, so
binary images (Omniglot) are accepted; non-binary tasks are refused, since the energy is
defined on ±1 states.

Budget: the state is the stored patterns themselves, K = min(N, floor(budget / D)) whole
rows of D float32 values: memory_floats = K * D. When N * D exceeds the budget only the
FIRST floor(budget / D) patterns written are kept (64 at Table 1, so at N = 96 the last 32
are dropped and their queries fall into some stored pattern's basin).
"""
from __future__ import annotations

import math
import sys
from typing import Any

import torch

from baselines.modern_hopfield import StoredPatternMemory
from membench.errors import MembenchError
from membench.interface import TaskSpec
from membench.options import check_positive_int

INTERACTIONS = ("polynomial", "exp")


def _largest_finite_power(dim: int) -> int:
    """The largest n with dim^n finite in float64 (dim >= 2), exactly: the logarithms' estimate, corrected by
    comparing the integer power with the largest float."""
    most = int(math.log(sys.float_info.max) / math.log(dim))
    while dim ** most > sys.float_info.max:
        most -= 1
    while dim ** (most + 1) <= sys.float_info.max:
        most += 1
    return most


class DenseAssociativeMemory(StoredPatternMemory):
    """E(σ) = -Σ_μ F(ξ_μ · σ); clamped asynchronous single-unit energy descent on the erased units."""

    name = "dense_associative_memory"

    def __init__(self, spec: TaskSpec, num_slots: int, degree: int = 3, interaction: str = "polynomial",
                 max_sweeps: int = 100):
        super().__init__(spec, num_slots)
        if not spec.binary:
            raise MembenchError(f"{self.name} takes binary patterns (its energy is defined on ±1 states); "
                                "this task's patterns are real-valued")
        if interaction not in INTERACTIONS:
            raise MembenchError(f"{self.name}: interaction={interaction!r} is not one of {', '.join(INTERACTIONS)}")
        check_positive_int(self.name, "degree", degree)
        dim = spec.pattern_size
        if interaction == "polynomial" and dim > 1 and degree > (most := _largest_finite_power(dim)):
            raise MembenchError(f"{self.name}: degree={degree} overflows float64 at D = {dim} (the energy gaps reach "
                                f"D^degree): give a degree of at most {most}, or --option interaction=exp")
        check_positive_int(self.name, "max_sweeps", max_sweeps)
        self.degree, self.interaction, self.max_sweeps = degree, interaction, max_sweeps

    def energy_gap(self, rest: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """rest (..., K) overlaps a_μ without the unit, bits (..., K) its stored values ξ_μi ->
        a value (...) with the sign of E(σ_i = -1) - E(σ_i = +1) (0 when the energies are equal)."""
        rest, bits = rest.double(), bits.double()
        if self.interaction == "exp" and not torch.equal(rest, rest.round()):  # real-valued queries (noise)
            return (bits * torch.exp(rest - rest.max(dim=-1, keepdim=True).values)).sum(-1)  # ∝ Σ ξ_μi e^{a_μ}
        if self.interaction == "exp":
            dim = self.spec.pattern_size                     # overlaps are integers in [-D, D]: exact ties
            levels = torch.arange(-dim, dim + 1, dtype=rest.dtype, device=rest.device)
            per_level = rest.new_zeros(*rest.shape[:-1], 2 * dim + 1).scatter_add_(-1, (rest + dim).long(), bits)
            shift = (levels - rest.max(dim=-1, keepdim=True).values).clamp(max=0)  # levels above max hold 0
            return (per_level * torch.exp(shift)).sum(-1)
        return ((rest + bits).clamp(min=0) ** self.degree - (rest - bits).clamp(min=0) ** self.degree).sum(-1)

    def retrieve(self, memories: torch.Tensor, spins: torch.Tensor, known: torch.Tensor,
                 clamped: torch.Tensor) -> torch.Tensor:
        batch, num_queries, dim = spins.shape
        spins = spins.clone()
        columns = memories.transpose(1, 2)                  # (B, D, K): row i holds ξ_μi for every μ
        overlaps = spins @ memories.transpose(1, 2)         # (B, Q, K): ξ_μ · σ
        episode = torch.arange(batch, device=spins.device)[:, None].expand(batch, num_queries)
        # clamped units never move: visit the free ones first and stop after the largest free count
        clamped_last = clamped.float().cpu() * 2.0
        num_steps = int((~clamped).sum(-1).max())
        for _ in range(self.max_sweeps):
            order = (torch.rand(batch, num_queries, dim) + clamped_last).argsort(dim=-1).to(spins.device)
            changed = torch.zeros(batch, num_queries, dtype=torch.bool, device=spins.device)
            for step in range(num_steps):
                unit = order[:, :, step]                                    # (B, Q)
                bits = columns[episode, unit]                               # (B, Q, K)
                current = spins.gather(-1, unit[..., None]).squeeze(-1)     # (B, Q)
                gap = self.energy_gap(overlaps - bits * current[..., None], bits)
                free = ~clamped.gather(-1, unit[..., None]).squeeze(-1)
                new = torch.where(free & (gap != 0), gap.sign().to(spins.dtype), current)
                overlaps += bits * (new - current)[..., None]
                changed |= new != current
                spins.scatter_(-1, unit[..., None], new[..., None])
            if not changed.any():
                break
        return spins

    def config(self) -> dict[str, Any]:
        return {**super().config(), "degree": self.degree, "interaction": self.interaction,
                "max_sweeps": self.max_sweeps}
