"""Pass-through: stores nothing and returns the query unchanged (memory 0 floats).

The floor every memory should beat: its error is what the corruption alone costs. On the
binary task the 64 erased bits sit at 0.5 and count as wrong (64 bits); on Figure 3 it is
the error of the untouched 16x16 block (256 pixels on Omniglot; about 46 squared error
per CIFAR image on the test split). A model above this line does harm when it reads.
"""
from __future__ import annotations

import torch

from membench.interface import AssociativeMemory, TaskSpec


class PassThrough(AssociativeMemory):
    name = "passthrough"

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec

    def memory_floats(self, spec: TaskSpec) -> int:
        return 0

    def write(self, patterns: torch.Tensor) -> None:
        """Keeps nothing about patterns (B, N, *S)."""
        return None

    def read(self, state: None, queries: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, *S) -> the same tensor."""
        return queries
