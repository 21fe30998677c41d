"""Raw-slot nearest-neighbour memory: the no-learning reference for a float32 budget.

Stores as many whole patterns as the budget allows (the first ones written) and answers
a query with the stored pattern closest to it on the known (non-erased) entries, those known
entries kept as given where the task says they are the pattern's own (`spec.clamp_known`: erasures,
as every classical memory here does; under noise the slot is returned whole). At 8256 floats and
128-bit patterns it holds 64 patterns, so it is exact for N <= 64 and fills the erased entries of
the unstored patterns beyond that from another one: it shows what the budget allows without learning.
"""
from __future__ import annotations

import torch

from membench.budget import check_whole_patterns
from membench.interface import AssociativeMemory, TaskSpec


class RawSlotMemory(AssociativeMemory):
    name = "raw_slots"

    def __init__(self, spec: TaskSpec, num_slots: int):
        super().__init__()
        check_whole_patterns(self.name, num_slots, spec)
        self.spec, self.num_slots = spec, num_slots

    @classmethod
    def from_spec(cls, spec: TaskSpec, budget: int, preset: str = "quick", **options) -> "RawSlotMemory":
        return cls(spec, **{"num_slots": budget // spec.pattern_size, **options})  # any other option is refused

    def memory_floats(self, spec: TaskSpec) -> int:
        return min(spec.num_patterns, self.num_slots) * spec.pattern_size

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        return patterns[:, : self.num_slots].flatten(2).clone()  # (B, slots, D)

    def read(self, slots: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        flat = queries.flatten(2)                                   # (B, Q, D)
        shown = flat != self.spec.fill_value
        known = shown.float()
        # squared distance on known entries: sum_known (q - s)^2, computed with matmuls
        distance = (
            (known * flat**2).sum(-1, keepdim=True)
            - 2 * (known * flat) @ slots.transpose(1, 2)
            + known @ (slots**2).transpose(1, 2)
        )                                                           # (B, Q, slots)
        nearest = distance.argmin(dim=-1)                           # (B, Q)
        retrieved = slots.gather(1, nearest[..., None].expand(-1, -1, slots.shape[-1]))
        if self.spec.clamp_known:                                   # erasures: what the query shows is the pattern's
            retrieved = torch.where(shown, flat, retrieved)
        return retrieved.view_as(queries)

    def config(self) -> dict:
        return {"num_slots": self.num_slots}
