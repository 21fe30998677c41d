"""Mean fill: stores nothing and fills each erased entry with its query's known mean (memory 0 floats).

The level a memory must beat to show it recalls anything: what a read gets from the query
alone. Each erased entry (at the task's fill value) becomes the mean of the same query's
known entries in its channel; known entries are returned unchanged. On Figure 3 that is the
background for Omniglot (a block read as blank: the ink it hid is wrong) and a flat patch of
the image's mean colour on CIFAR. Passthrough (the query unchanged) counts the block at 0.5,
which on Omniglot makes every block pixel wrong; this is the fairer floor. It needs to know
which entries are erased, so it refuses tasks whose corruption may change any entry (noise).
"""
from __future__ import annotations

import torch

from baselines.passthrough import PassThrough
from membench.errors import MembenchError
from membench.interface import TaskSpec


class MeanFill(PassThrough):
    """PassThrough's 0-float memory (it writes nothing) with another read."""

    name = "mean_fill"

    def __init__(self, spec: TaskSpec):
        if not spec.clamp_known:
            raise MembenchError(f"{self.name} fills the erased entries, and this task's corruption may change any "
                                "entry (clamp_known=False); use passthrough as the floor there")
        super().__init__(spec)

    def read(self, state: None, queries: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, *S) -> the queries with each erased entry set to the mean of the known entries of its
        query and channel (images (C, H, W): per channel; flat patterns: over the pattern); a query with no
        known entry keeps the fill value."""
        shape = queries.shape
        channels = shape[2] if len(shape) == 5 else 1
        flat = queries.reshape(*shape[:2], channels, -1)            # (B, Q, C, pixels)
        known = flat != self.spec.fill_value
        count = known.sum(-1, keepdim=True)
        mean = (flat * known).sum(-1, keepdim=True) / count.clamp(min=1)
        mean = torch.where(count > 0, mean, torch.full_like(mean, self.spec.fill_value))
        return torch.where(known, flat, mean).reshape(shape)
