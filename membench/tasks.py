"""Episode distributions: what is written, how queries are corrupted, how errors are counted.

A task samples batches of episodes. Each episode writes N patterns and queries every
one of them once, corrupted; query i belongs to pattern i. All sampling uses a CPU
`torch.Generator`, so the same seed gives the same episodes on every device.
"""
from __future__ import annotations

import abc
import contextlib
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from membench.errors import MembenchError
from membench.interface import TaskSpec
from membench.options import is_finite, is_int


def seed_all(seed: int) -> None:
    """Seed torch's, NumPy's and Python's global generators: a model drawing from any of them (its initial
    values, a read's update order) draws the same numbers for the same run, here or in a fresh process."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def forked_generators(device: torch.device) -> Iterator[None]:
    """Inside, the global generators (torch's, on `device` too, NumPy's, Python's) may be reseeded; after,
    they are as before."""
    saved = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])


def global_generators(device: torch.device) -> dict[str, Any]:
    """The global generators' states (torch's, on `device` too, NumPy's, Python's) as data a checkpoint loaded
    with weights_only holds: a model drawing from them in training (dropout) draws on after a pause what an
    unpaused run would (`set_global_generators`)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                       has_gauss, gauss], "python": list(random.getstate())}
    if device.type == "cuda":
        try:
            state["cuda"] = torch.cuda.get_rng_state(device)
        except RuntimeError:  # (not checked on a GPU yet) a checkpoint without it resumes all the same
            pass              # for every built-in model, none of which draws from CUDA's global generator
    return state


def _numpy_and_python(state: dict[str, Any]) -> tuple[tuple, tuple]:
    """NumPy's and Python's generator states as their generators take them, from `global_generators`' data."""
    kind, keys, position, has_gauss, gauss = state["numpy"]
    version, internal, gauss_next = state["python"]
    return (kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss), (version, tuple(internal), gauss_next)


def valid_global_generators(value: Any) -> bool:
    """Whether `value` is what `global_generators` saves: torch's state (its CPU generator's bytes), CUDA's as a
    tensor where saved, and NumPy's and Python's, each taken by a generator of its kind."""
    if not isinstance(value, dict):
        return False
    mine, cuda = value.get("torch"), value.get("cuda", torch.zeros(0, dtype=torch.uint8))
    if not (isinstance(mine, torch.Tensor) and mine.dtype == torch.uint8 and mine.shape == torch.get_rng_state().shape
            and isinstance(cuda, torch.Tensor) and isinstance(value.get("numpy"), list)
            and isinstance(value.get("python"), list)):
        return False
    try:
        numpy_state, python_state = _numpy_and_python(value)
        np.random.RandomState().set_state(numpy_state)
        random.Random().setstate(python_state)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def set_global_generators(state: dict[str, Any], device: torch.device) -> None:
    """Set the global generators to `state` (`global_generators`'); CUDA's only where it was saved on CUDA and
    is resumed there."""
    torch.set_rng_state(state["torch"])
    numpy_state, python_state = _numpy_and_python(state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if device.type == "cuda" and "cuda" in state:
        try:
            torch.cuda.set_rng_state(state["cuda"], device)
        except RuntimeError:  # another torch's state: as saving it, never a reason to stop training
            pass


def check_positive(name: str, value: int) -> None:
    """MembenchError unless `value` is a positive integer."""
    if not (is_int(value) and value >= 1):
        raise MembenchError(f"{name}={value!r} must be a positive integer")


@dataclass
class Episodes:
    """A batch of B episodes. patterns (B, N, *S) in [0, 1]; queries the same shape, corrupted."""

    patterns: torch.Tensor
    queries: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episodes":
        return Episodes(self.patterns.to(device, non_blocking=non_blocking),
                        self.queries.to(device, non_blocking=non_blocking))

    def pinned(self) -> "Episodes":
        """A copy in page-locked memory, whose copy to a CUDA device can overlap the device's work."""
        return Episodes(self.patterns.pin_memory(), self.queries.pin_memory())


class Task(abc.ABC):
    """An episode distribution with its error measure."""

    spec: TaskSpec
    error_unit: str  # what one unit of error is, e.g. "bits"

    @abc.abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator, split: str = "test") -> Episodes:
        """B episodes from `split` ('train' for meta-training, 'test' for evaluation)."""

    @abc.abstractmethod
    def errors(self, retrievals: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        """Per-query error (B, N) of retrievals (B, N, *S) against the written patterns."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description; part of run ids and checkpoint keys."""

    def with_num_patterns(self, num_patterns: int) -> "Task":
        """The same task writing a different number of patterns per episode."""
        return type(self)(**{**self.config_kwargs(), "num_patterns": num_patterns})

    def config_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.config().items() if k != "kind"}


class BinaryTask(Task):
    """Random binary patterns; queries erase `erased` random positions (set to 0.5), or flip bits.

    With `flip` > 0 (then `erased` must be 0) a query instead flips round(flip * dim) random
    positions of its pattern (0 <-> 1), chosen without replacement per query; no entry is
    0.5 and `spec.clamp_known` is False: a model must be free to change every bit.

    Error: number of wrong bits over all `dim` positions, a bit wrong when its retrieval is 0.5
    or more away from it (thresholding at 0.5 for retrievals in [0, 1]; a retrieval of exactly
    0.5, undecided, counts as wrong, and so does -0.5 for a 0 or 1.5 for a 1). Returning the queries unchanged
    errs on every erased bit (64 by default); copying the known bits and guessing the erased ones
    at random errs on half of them (chance: 32 by default).
    """

    error_unit = "bits"

    def __init__(self, num_patterns: int, dim: int = 128, erased: int = 64, flip: float = 0.0):
        check_positive("num_patterns", num_patterns)
        check_positive("dim", dim)
        if not 0 <= erased <= dim:
            raise MembenchError(f"erased={erased} must lie in [0, dim={dim}]")
        if not (is_finite(flip) and 0 <= flip <= 0.5):
            raise MembenchError(f"flip={flip!r} must be a fraction of the bits in [0, 0.5]")
        if flip > 0 and erased > 0:
            raise MembenchError(f"flip={flip} corrupts queries instead of erasure: give erased=0 with it "
                                f"(got erased={erased})")
        self.dim, self.erased, self.flip = dim, erased, float(flip)
        self.flipped = round(self.flip * dim)  # bits flipped per query
        self.spec = TaskSpec(pattern_shape=(dim,), num_patterns=num_patterns, binary=True, fill_value=0.5,
                             clamp_known=self.flip == 0)

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "test") -> Episodes:
        shape = (batch_size, self.spec.num_patterns, self.dim)
        patterns = torch.randint(0, 2, shape, generator=generator).float()
        order = torch.rand(shape, generator=generator).argsort(dim=-1)  # random positions, without replacement
        if self.flip > 0:
            flipped_mask = torch.zeros(shape, dtype=torch.bool).scatter_(-1, order[..., : self.flipped], True)
            return Episodes(patterns, torch.where(flipped_mask, 1.0 - patterns, patterns))
        erased_mask = torch.zeros(shape, dtype=torch.bool).scatter_(-1, order[..., : self.erased], True)
        queries = patterns.masked_fill(erased_mask, self.spec.fill_value)
        return Episodes(patterns, queries)

    def errors(self, retrievals: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        assert retrievals.shape == patterns.shape, f"retrievals {tuple(retrievals.shape)} != patterns {tuple(patterns.shape)}"
        return ((retrievals - patterns).abs() >= 0.5).sum(dim=-1).float()

    def config(self) -> dict[str, Any]:
        config = {"kind": "binary", "num_patterns": self.spec.num_patterns, "dim": self.dim, "erased": self.erased}
        if self.flip:  # only when set, so configs (run ids, checkpoint keys) of erasure tasks stay as they were
            config["flip"] = self.flip
        return config
