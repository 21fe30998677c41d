"""Modern (continuous) Hopfield network of Ramsauer et al. (2020), and the stored-pattern base it shares.

Rule: the memories are the written patterns as rows of X (K, D) in ±1 coding (x -> 2x - 1;
real values in [0, 1] map into [-1, 1]). A query q in the same coding, with erased entries
at 0, is updated by the attention step

    ξ <- Xᵀ softmax(β X ξ)

`steps` times from ξ = q; after every step the known (non-erased) entries are reset to the
query's, so only the erased entries move (under bit flips, where `spec.clamp_known` is False,
every entry moves). The output is the continuous ξ mapped back to [0, 1] by (ξ + 1) / 2 (the
harness thresholds it at 0.5); clamped entries are returned exactly as given. β multiplies
the raw dot product (no 1/√D): on Table 1 a stored pattern matches a query on its 64 known bits
(overlap 64) while another stored pattern overlaps it by about 0 ± 8, so any β of order 1 already
separates them and the default β = 1 retrieves exactly whenever the pattern is stored.

Protocol: patterns (B, N, *S) are flattened to (B, N, D), D = prod(S), so flat binary
patterns (Table 1) and images (C, H, W) (Figure 3, binary or not) are both accepted;
retrievals come back in the query's shape. Reading draws no random numbers.

Budget: the state is the stored rows themselves, K = min(N, floor(budget / D)) whole
patterns of D float32 values: memory_floats = K * D. When N * D exceeds the budget only the
FIRST floor(budget / D) patterns written are kept and the rest are dropped, as in
`raw_slots`: at Table 1 (budget 8256, D = 128) 64 patterns fit, so at N = 96 the last 32
patterns are not stored and their queries retrieve some other (stored) pattern.
"""
from __future__ import annotations

import abc
from typing import Any

import torch

from membench.budget import check_whole_patterns
from membench.interface import AssociativeMemory, TaskSpec
from membench.options import check_positive_int, check_positive_number


class StoredPatternMemory(AssociativeMemory):
    """Keeps the first `num_slots` patterns whole, flattened, as ±1 rows; subclasses define `retrieve`.

    State: memories (B, K, D) float32 in [-1, 1], K = min(N, num_slots), a fresh tensor.
    """

    def __init__(self, spec: TaskSpec, num_slots: int):
        super().__init__()
        check_whole_patterns(self.name, num_slots, spec)
        self.spec, self.num_slots = spec, num_slots

    @classmethod
    def from_spec(cls, spec: TaskSpec, budget: int, preset: str = "quick", **options: Any) -> "StoredPatternMemory":
        """As many whole patterns as `budget` float32 values hold, num_slots = budget // D (option num_slots: fewer)."""
        return cls(spec, **{"num_slots": budget // spec.pattern_size, **options})

    def memory_floats(self, spec: TaskSpec) -> int:
        return min(spec.num_patterns, self.num_slots) * spec.pattern_size

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, N, *S) in [0, 1] -> memories (B, K, D) in ±1 coding (the first K patterns)."""
        return 2.0 * patterns[:, : self.num_slots].flatten(2) - 1.0

    def read(self, memories: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """memories (B, K, D), queries (B, Q, *S) -> retrievals (B, Q, *S) in [0, 1], known entries clamped."""
        flat = queries.flatten(2)                       # (B, Q, D)
        known = flat != self.spec.fill_value            # (B, Q, D) entries the query shows
        clamped = known if self.spec.clamp_known else torch.zeros_like(known)  # entries kept as given
        spins = torch.where(known, 2.0 * flat - 1.0, torch.zeros_like(flat))
        retrieved = self.retrieve(memories, spins, known, clamped)  # (B, Q, D) in [-1, 1]
        return torch.where(clamped, flat, (retrieved + 1.0) / 2.0).reshape(queries.shape)

    @abc.abstractmethod
    def retrieve(self, memories: torch.Tensor, spins: torch.Tensor, known: torch.Tensor,
                 clamped: torch.Tensor) -> torch.Tensor:
        """memories (B, K, D) ±1 rows; spins (B, Q, D) queries in ±1 coding, erased entries 0; known
        (B, Q, D) bool: entries the query shows; clamped (B, Q, D) bool: entries kept as given (known,
        or none under bit flips) -> retrievals (B, Q, D) in [-1, 1] (`read` resets the clamped ones)."""

    def config(self) -> dict[str, Any]:
        return {"num_slots": self.num_slots}


class ModernHopfield(StoredPatternMemory):
    """ξ <- Xᵀ softmax(β X ξ), `steps` times, known entries clamped after every step."""

    name = "modern_hopfield"

    def __init__(self, spec: TaskSpec, num_slots: int, beta: float = 1.0, steps: int = 3):
        super().__init__(spec, num_slots)
        check_positive_number(self.name, "beta", beta)
        check_positive_int(self.name, "steps", steps)
        self.beta, self.steps = float(beta), steps

    def retrieve(self, memories: torch.Tensor, spins: torch.Tensor, known: torch.Tensor,
                 clamped: torch.Tensor) -> torch.Tensor:
        state = spins
        for _ in range(self.steps):
            weights = torch.softmax(self.beta * state @ memories.transpose(1, 2), dim=-1)  # (B, Q, K)
            state = torch.where(clamped, spins, weights @ memories)                       # (B, Q, D)
        return state

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta": self.beta, "steps": self.steps}
