"""The one interface every memory model implements.

A memory is used in two phases, batched over B independent episodes:

    state = model.write(patterns)          # patterns (B, N, *S) -> opaque state
    retrievals = model.read(state, queries)  # queries (B, Q, *S) -> retrievals (B, Q, *S)

`write` must not keep anything about the patterns on `self`: everything the memory
knows about the written set lives in the returned state, and `memory_floats` states
how many float32 values that state amounts to. The runner refuses a model whose
count exceeds the run's budget.

Models that must be meta-trained set `trainable = True` and implement `meta_loss`;
the runner then calls `membench.training.meta_train`, which is the single training
entry point shared by every learned model.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

MemoryState = Any  # whatever `write` returns; only the same model's `read` looks inside


@dataclass(frozen=True)
class TaskSpec:
    """What a model may know about the task when it is built.

    pattern_shape: shape of one pattern, e.g. (128,) or (3, 32, 32)
    num_patterns: N, patterns written per episode
    binary: True when patterns are in {0, 1} (errors counted in bits)
    fill_value: value that marks erased / corrupted entries in a query (the midpoint)
    """

    pattern_shape: tuple[int, ...]
    num_patterns: int
    binary: bool = True
    fill_value: float = 0.5

    @property
    def pattern_size(self) -> int:
        size = 1
        for dim in self.pattern_shape:
            size *= dim
        return size


class AssociativeMemory(nn.Module, abc.ABC):
    """Base class of every model in membench.

    Subclasses are built with `from_spec(spec, budget, preset, **options)` and may size
    themselves to the budget (e.g. as many slots as fit). Inputs and outputs are float32
    tensors with values in [0, 1].
    """

    name: ClassVar[str] = ""      # registry name, e.g. "hopfield_hebb"
    trainable: ClassVar[bool] = False  # True: runner meta-trains before evaluating

    @classmethod
    def from_spec(cls, spec: TaskSpec, budget: int, preset: str = "quick", **options: Any) -> "AssociativeMemory":
        """Build the model for a task and a float32 budget. Default: `cls(spec, **options)`."""
        return cls(spec, **options)

    @abc.abstractmethod
    def memory_floats(self, spec: TaskSpec) -> int:
        """Number of float32 values the written state holds about N patterns of `spec`."""

    @abc.abstractmethod
    def write(self, patterns: torch.Tensor) -> MemoryState:
        """Store patterns (B, N, *S) for B independent episodes; return the memory state."""

    @abc.abstractmethod
    def read(self, state: MemoryState, queries: torch.Tensor) -> torch.Tensor:
        """Retrieve from queries (B, Q, *S) with erased entries at spec.fill_value; same shape out."""

    # --- meta-learned models only -------------------------------------------------
    def meta_loss(self, patterns: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable training loss of one batch of episodes, and the retrievals.

        patterns (B, N, *S) are written, queries (B, N, *S) are their corrupted versions
        (query i belongs to pattern i). Returns (scalar loss, retrievals (B, N, *S)); the
        training loop logs the task's error of the retrievals. Only models with
        `trainable = True` implement it.
        """
        raise TypeError(f"{type(self).__name__} is not trainable (trainable = False)")

    def train_config(self, preset: str) -> "TrainConfig":  # noqa: F821 (forward reference)
        """The `membench.training.TrainConfig` for a preset ('quick' or 'paper')."""
        raise TypeError(f"{type(self).__name__} is not trainable (trainable = False)")

    def config(self) -> dict[str, Any]:
        """JSON-able description of the built model; part of checkpoint keys and run records."""
        return {}
