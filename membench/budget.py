"""Float32 memory budgets: the declared count, the measured state, and the refusals.

A model declares `memory_floats(spec)`; the runner measures what `write` actually returns
(`measure_state`) and refuses a run whose measured count differs from the declared one or
exceeds the budget (`check_measured`). Measuring counts storage, not shapes: every byte under
the state counts once as bytes / 4 (a view of a larger tensor counts the whole storage, a bool
or float64 tensor its bytes, storages that overlap their union), split over the B episodes when
every view of it has first dimension B. Every write of a run must return the probe write's
layout (`StateContract`: containers, keys, dtypes, shapes), so only the measured values can
hold what was written, and reads are given a `sealed` copy of them, so what the measurement
does not see cannot reach them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from membench.errors import MembenchError, OverBudgetError
from membench.interface import AssociativeMemory, TaskSpec

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds


def hopfield_floats(dim: int) -> int:
    """Free values of a Hopfield network on `dim` units: symmetric zero-diagonal weights + thresholds."""
    return dim * (dim - 1) // 2 + dim


TABLE1_BUDGET = hopfield_floats(128)  # 8256, the paper's budget for 128-bit patterns
TABLE1_NUM_PATTERNS = (16, 32, 48, 64, 96)  # Table 1's N; the learned models' presets train one checkpoint on all


def declared_floats(model: AssociativeMemory, spec: TaskSpec, model_name: str) -> int:
    """`model.memory_floats(spec)`, which must be a non-negative integer."""
    value = model.memory_floats(spec)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise MembenchError(f"model '{model_name}': memory_floats returned {value!r} ({type(value).__name__}); "
                            "it must return a non-negative integer, the float32 values its state holds per episode")
    return int(value)


def check_whole_patterns(model_name: str, num_slots: int, spec: TaskSpec, option: str = "num_slots",
                         slot: str = "whole pattern") -> None:
    """OverBudgetError unless a memory of pattern-sized slots (whole patterns; SDM: counter vectors) has at least
    one (`option`: by default the budget's whole slots, or the option's value); MembenchError for a non-integer."""
    if isinstance(num_slots, bool) or not isinstance(num_slots, int):
        raise MembenchError(f"{model_name}: {option}={num_slots!r} must be a positive integer")
    if num_slots < 1:
        raise OverBudgetError(f"{model_name}: no {slot} of {spec.pattern_size} values fits ({option}={num_slots}); "
                              f"give a budget of at least {spec.pattern_size}, or --option {option}=K with 1 <= K <= "
                              f"budget // {spec.pattern_size}")


def check_declared(model: AssociativeMemory, spec: TaskSpec, budget: int, model_name: str,
                   swept: bool = False) -> int:
    """The declared count for `spec`; OverBudgetError if it exceeds `budget` (checked before any training).
    `swept`: the budget is a point of a suite's memory sweep (Figure 3), which --budget only selects."""
    count = declared_floats(model, spec, model_name)
    if count > budget:
        fix = ("; size it from the budget its from_spec is given (each point of the sweep has its own)" if swept
               else " or run with a larger --budget")
        raise OverBudgetError(
            f"model '{model_name}' declares {count} float32 values for N={spec.num_patterns} patterns of shape "
            f"{spec.pattern_shape}, over the budget of {budget}. Shrink the model's memory (e.g. fewer slots or "
            f"a smaller writable layer){fix}.")
    return count


FLOAT32_EXACT_INT = 2 ** 24  # integers a float32 holds exactly
MAX_KEY_LENGTH = 100  # a dict key names a part of the state; it is not a place to keep values
MAX_DEPTH = 32  # containers nested deeper than this (a state that holds itself) are not measured
TENSOR_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                 torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128}  # measured and copied
_FIX = ("return plain float tensors (or tuples, lists, dicts with string keys of at most "
        f"{MAX_KEY_LENGTH} characters, or dataclasses of them)")


def _unmeasurable(model_name: str, path: str, what: str) -> MembenchError:
    path = path if len(path) <= 80 else path[:60] + "..."
    return MembenchError(f"model '{model_name}': its memory state holds {path}, {what}, which membench cannot "
                         f"measure; {_FIX}")


def _shape(shape: tuple[int, ...], batch_size: int) -> tuple[int | str, ...]:
    return tuple("B" if index == 0 and size == batch_size else size for index, size in enumerate(shape))


def _walk(state: Any, path: str, batch_size: int, model_name: str, layout: list, depth: int = 0):
    """Yield (path, leaf) for every tensor, array or number of `state`, appending its layout (container
    types, keys, where the Nones are, leaf dtypes and shapes with the episode dimension as "B") to
    `layout`; refuse what cannot be measured (`depth`: containers above `state`)."""
    if depth > MAX_DEPTH:
        raise _unmeasurable(model_name, path, f"containers nested more than {MAX_DEPTH} deep (does the state "
                            "hold itself?)")
    if state is None:
        layout.append((path, "None"))
    elif type(state) in (bool, int, float) or (isinstance(state, np.generic) and state.dtype.kind in "biuf"):
        if isinstance(state, (int, np.integer)) and not isinstance(state, (bool, np.bool_)) \
                and abs(int(state)) > FLOAT32_EXACT_INT:
            raise _unmeasurable(model_name, path, "an integer beyond float32's exact range (|n| > 2^24)")
        layout.append((path, "number"))
        yield path, state
    elif isinstance(state, torch.Tensor):
        if type(state) not in (torch.Tensor, torch.nn.Parameter):
            raise _unmeasurable(model_name, path, f"a {type(state).__name__} (a tensor subclass)")
        if state.is_nested or state.layout != torch.strided or state.is_quantized or state.device.type == "meta":
            what = ("a nested tensor" if state.is_nested else "a quantized tensor" if state.is_quantized
                    else "a tensor on the meta device" if state.device.type == "meta"
                    else f"a tensor with layout {state.layout}")
            raise _unmeasurable(model_name, path, what)
        if state.dtype not in TENSOR_DTYPES:
            raise _unmeasurable(model_name, path, f"a tensor of dtype {state.dtype}")
        if any(name is not None for name in getattr(state, "names", None) or ()):  # (where torch still has them)
            raise _unmeasurable(model_name, path, "a named tensor (its dimension names are not measured)")
        layout.append((path, "tensor", state.device.type, str(state.dtype), _shape(state.shape, batch_size)))
        yield path, state
    elif isinstance(state, np.ndarray):
        if type(state) is not np.ndarray or state.dtype.hasobject:
            raise _unmeasurable(model_name, path, "an array of Python objects" if state.dtype.hasobject
                                else f"a {type(state).__name__} (an array subclass)")
        if state.dtype.kind not in "biufc" or state.dtype.fields is not None or state.dtype.metadata is not None:
            dtype = repr(state.dtype) if len(repr(state.dtype)) <= 60 else repr(state.dtype)[:57] + "..."
            raise _unmeasurable(model_name, path, f"an array of {dtype} (a structured dtype, one with metadata, or "
                                "not numbers: its names and metadata are not measured)")
        layout.append((path, "array", state.dtype.str, _shape(state.shape, batch_size)))
        yield path, state
    elif isinstance(state, (tuple, list)):  # any other subclass is copied, and laid out, as a plain one
        kind = type(state) if hasattr(state, "_fields") else "tuple" if isinstance(state, tuple) else "list"
        layout.append((path, kind, len(state)))
        for index, item in enumerate(state):
            yield from _walk(item, f"{path}[{index}]", batch_size, model_name, layout, depth + 1)
    elif isinstance(state, dict):
        for key in state:
            if type(key) is not str or len(key) > MAX_KEY_LENGTH:
                raise _unmeasurable(model_name, f"{path}[{str(key)[:40]!r}]",
                                    f"a key that is not a string of at most {MAX_KEY_LENGTH} characters")
        layout.append((path, "dict", tuple(state)))
        for key, item in state.items():
            yield from _walk(item, f"{path}[{key!r}]", batch_size, model_name, layout, depth + 1)
    elif dataclasses.is_dataclass(state) and not isinstance(state, type):
        fields = [field.name for field in dataclasses.fields(state)]
        layout.append((path, type(state), tuple(fields)))
        for name in fields:
            yield from _walk(_field(state, name), f"{path}.{name}", batch_size, model_name, layout, depth + 1)
    else:
        raise _unmeasurable(model_name, path, f"of type {type(state).__name__}")


def state_layout(state: Any, batch_size: int, model_name: str = "model") -> tuple:
    """The layout of a measurable `state`: its containers (a dataclass's or named tuple's class itself, not its
    name), keys, Nones, and each leaf's kind, dtype and shape (the episode dimension as "B"). The runner requires
    every write of a run to give the probe's layout, so the layout carries nothing about the patterns written,
    and no write can return a class of its own making (whose class attributes would hold what it wrote)."""
    layout: list = []
    for _ in _walk(state, "state", batch_size, model_name, layout):
        pass
    return tuple(layout)


def _field(state: Any, name: str) -> Any:
    """A dataclass field's value as stored, past any `__getattribute__` or `__getattr__` of its class."""
    return object.__getattribute__(state, name)


def sealed(state: Any) -> Any:
    """A copy of a measured `state` that holds only what `measure_state` counts, for `read`: new plain
    tensors and arrays laid out afresh (no attributes, no storage shared with the original, the strides of a
    new contiguous tensor or C-ordered array, no conjugate or negative bit), plain lists, tuples and dicts,
    dataclasses and named tuples rebuilt from all their items without running their class's code (no
    `__init__`, `__post_init__` or `_make`), Python numbers as plain bool, int or float (floats rounded to
    float32). Nothing kept beside the measured values (an attribute set on a tensor or a number, a cache keyed
    by the state's identity, the strides of a tensor of no elements) reaches the read. Call it on a state
    `measure_state` accepted: tensor and array subclasses are refused there; the runner measures the copy too
    (`membench.integrity.kept`), so a container that shows the measurement other items than it copies is
    refused."""
    if state is None or isinstance(state, (bool, np.bool_)):
        return None if state is None else bool(state)
    if isinstance(state, (int, np.integer)):
        return int(state)
    if isinstance(state, (float, np.floating)):
        return float(np.float32(state))
    if isinstance(state, torch.Tensor):
        return torch.empty(state.shape, dtype=state.dtype, device=state.device).copy_(state.detach())
    if isinstance(state, np.ndarray):  # (the dtype rebuilt from its string: no metadata)
        return np.array(state, dtype=np.dtype(state.dtype.str), copy=True, order="C", subok=False)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return tuple.__new__(type(state), [sealed(item) for item in state])
    if isinstance(state, (tuple, list)):
        return (tuple if isinstance(state, tuple) else list)(sealed(item) for item in state)
    if isinstance(state, dict):
        return {key: sealed(item) for key, item in state.items()}
    copy = object.__new__(type(state))
    for field in dataclasses.fields(state):
        object.__setattr__(copy, field.name, sealed(_field(state, field.name)))
    return copy


def _extent(leaf: torch.Tensor | np.ndarray) -> tuple[str, int, int]:
    """(device, first byte, end byte) of the whole storage under a tensor or array."""
    if isinstance(leaf, np.ndarray):
        root = leaf
        while isinstance(root.base, np.ndarray):
            root = root.base
        low, high = byte_bounds(root)
        return "cpu", low, high
    storage = leaf.untyped_storage()
    return str(leaf.device), storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def measure_state(state: Any, batch_size: int, model_name: str = "model") -> int:
    """float32 values per episode held by `state` from a write of `batch_size` episodes.

    Every byte of every storage under the state counts once, however many tensors or arrays view
    it (overlapping storages count their union); the bytes of a storage whose every view has first
    dimension `batch_size` are shared among the episodes, any other storage counts whole for each. A
    Python number counts as 4 bytes; the total rounds up to whole float32 values (ceil(bytes / 4)).
    Every leaf is meant to hold the B episodes on its first dimension (the interface's contract); a
    leaf shared by all episodes is read by its first dimension, so one whose first size equals B
    counts as per-episode, and its count then changes with B, which the run's contract refuses.
    """
    return _measured(state, batch_size, model_name)[0]


def _measured(state: Any, batch_size: int, model_name: str) -> tuple[int, tuple]:
    """(`measure_state`, `state_layout`) of `state`, from one walk."""
    extents: dict[str, list[tuple[int, int, bool]]] = {}
    total, layout = 0.0, []
    for _, leaf in _walk(state, "state", batch_size, model_name, layout):
        if not isinstance(leaf, (torch.Tensor, np.ndarray)):
            total += 4
            continue
        device, low, high = _extent(leaf)
        if high > low:
            extents.setdefault(device, []).append((low, high, leaf.ndim >= 1 and leaf.shape[0] == batch_size))
    for spans in extents.values():
        spans.sort()
        index = 0
        while index < len(spans):  # one merged run of overlapping storages at a time
            low, high, per_episode = spans[index]
            index += 1
            while index < len(spans) and spans[index][0] < high:
                high, per_episode = max(high, spans[index][1]), per_episode and spans[index][2]
                index += 1
            total += (high - low) / batch_size if per_episode else high - low
    return math.ceil(total / 4 - 1e-9), tuple(layout)


def _count_hint(state: Any, batch_size: int, model_name: str) -> str:
    """Why a state may count otherwise than its shapes suggest: its first leaf without the episode dimension,
    or not 4 bytes a value."""
    for path, leaf in _walk(state, "state", batch_size, model_name, []):
        if isinstance(leaf, (torch.Tensor, np.ndarray)) and (leaf.ndim == 0 or leaf.shape[0] != batch_size):
            return (f" ({path} has shape {tuple(leaf.shape)}, not B = {batch_size} episodes first, so it counts whole "
                    "for each episode)")
        if isinstance(leaf, torch.Tensor) and leaf.untyped_storage().nbytes() > leaf.nbytes:
            return (f" ({path} is a view of a larger storage, {leaf.untyped_storage().nbytes() // 4} values, counted "
                    "whole: return a copy of what is kept, e.g. .clone())")
        if isinstance(leaf, (torch.Tensor, np.ndarray)) and leaf.dtype not in (torch.float32, np.float32):
            return f" ({path} is {leaf.dtype}: counted by its bytes, 4 a value)"
    return ""


def _shared_hint(measured: int, declared: int, batch_size: int) -> str:
    """Why a state may count less than declared although every leaf has B first: a leaf shared by all episodes
    whose first size happens to be B counts as the episodes' own values."""
    if measured >= declared:
        return ""
    return (f" (every leaf whose first size is B = {batch_size} counts one B-th for each episode, so a leaf shared by "
            "all episodes whose first size happens to be B counts so too: give it the episode dimension, e.g. "
            "leaf.expand(B, *leaf.shape).clone())")


def check_measured(state: Any, batch_size: int, declared: int, budget: int, model_name: str) -> int:
    """Measure `state`; OverBudgetError when it exceeds `budget` or differs from `declared`."""
    return _checked_count(measure_state(state, batch_size, model_name), state, batch_size, declared, budget,
                          model_name)


def _checked_count(measured: int, state: Any, batch_size: int, declared: int, budget: int, model_name: str) -> int:
    if measured > budget or measured != declared:
        problem = "exceeds the budget" if measured > budget else "differs from what the model declares"
        raise OverBudgetError(
            f"model '{model_name}': its written state holds {measured} float32 values per episode, which {problem} "
            f"(declared {declared}, measured {measured}, budget {budget})"
            f"{_count_hint(state, batch_size, model_name) or _shared_hint(measured, declared, batch_size)}; "
            "memory_floats must count exactly what write returns, within the budget")
    return measured


@dataclass(frozen=True)
class StateContract:
    """What every write of one run must return: `floats` values per episode (declared and measured on the
    probe write, within `budget`) in the probe write's `layout` (`state_layout`)."""

    model_name: str
    floats: int
    budget: int
    layout: tuple

    def check(self, state: Any, batch_size: int) -> None:
        """MembenchError (OverBudgetError for the count) unless `state` holds `floats` values per episode
        laid out as the probe's state was."""
        measured, layout = _measured(state, batch_size, self.model_name)
        _checked_count(measured, state, batch_size, self.floats, self.budget, self.model_name)
        probe = self.layout
        if batch_size == 1:  # a leading 1 is then both a shared leaf's size and the episode dimension
            layout, probe = _ones(layout), _ones(probe)
        if layout != probe:
            first, now = next((a, b) for a, b in itertools.zip_longest(probe, layout) if a != b)
            then, now = _described(first), _described(now)
            if now == then:  # a class of the same name
                now = "another class of that name"
            raise MembenchError(
                f"model '{self.model_name}': its memory state's layout differs between writes ({then} "
                f"in the probe write, {now} now); every write must return the same containers, keys, "
                "dtypes and shapes (apart from the episode dimension), so that only the values hold what was written")


def _ones(layout: tuple) -> tuple:
    """`layout` with the episode dimension "B" of each leaf's shape written as 1."""
    return tuple((*entry[:-1], tuple(1 if size == "B" else size for size in entry[-1]))
                 if entry[1] in ("tensor", "array") else entry for entry in layout)


def _described(entry: tuple | None) -> str:
    if entry is None:
        return "nothing"
    parts = [f"{part.__module__}.{part.__qualname__}" if isinstance(part, type) else str(part) for part in entry[1:]]
    return f"{entry[0]}: " + " ".join(parts)
