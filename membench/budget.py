"""Float32 memory budgets: the declared count, the measured state, and the refusals.

A model declares `memory_floats(spec)`; the runner measures what `write` actually returns
(`measure_state`) and refuses a run whose measured count differs from the declared one or
exceeds the budget (`check_measured`). Measuring counts storage, not shapes: a tensor
counts its storage's bytes / 4 (a view of a larger tensor counts the whole of it, a bool
or float64 tensor its bytes), split over the B episodes when its first dimension is B.
Reads are given a `sealed` copy of the measured state, so what the measurement does not see
cannot reach them.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np
import torch

from membench.errors import MembenchError, OverBudgetError
from membench.interface import AssociativeMemory, TaskSpec


def hopfield_floats(dim: int) -> int:
    """Free values of a Hopfield network on `dim` units: symmetric zero-diagonal weights + thresholds."""
    return dim * (dim - 1) // 2 + dim


TABLE1_BUDGET = hopfield_floats(128)  # 8256, the paper's budget for 128-bit patterns


def declared_floats(model: AssociativeMemory, spec: TaskSpec, model_name: str) -> int:
    """`model.memory_floats(spec)`, which must be a non-negative integer."""
    value = model.memory_floats(spec)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise MembenchError(f"model '{model_name}': memory_floats returned {value!r} ({type(value).__name__}); "
                            "it must return a non-negative integer, the float32 values its state holds per episode")
    return int(value)


def check_whole_patterns(model_name: str, num_slots: int, spec: TaskSpec) -> None:
    """OverBudgetError unless a memory of whole patterns has at least one slot."""
    if num_slots < 1:
        raise OverBudgetError(f"{model_name}: the budget holds no whole pattern of {spec.pattern_size} values; "
                              f"give a budget of at least {spec.pattern_size}")


def check_declared(model: AssociativeMemory, spec: TaskSpec, budget: int, model_name: str) -> int:
    """The declared count for `spec`; OverBudgetError if it exceeds `budget` (checked before any training)."""
    count = declared_floats(model, spec, model_name)
    if count > budget:
        raise OverBudgetError(
            f"model '{model_name}' declares {count} float32 values for N={spec.num_patterns} patterns of shape "
            f"{spec.pattern_shape}, over the budget of {budget}. Shrink the model's memory (e.g. fewer slots or "
            "a smaller writable layer) or run with a larger --budget.")
    return count


FLOAT32_EXACT_INT = 2 ** 24  # integers a float32 holds exactly


def _unmeasurable(path: str, what: str) -> MembenchError:
    return MembenchError(f"the memory state holds {path}, {what}, which membench cannot measure; return float "
                         "tensors (or tuples, lists, dicts with string keys, or dataclasses of them)")


def _tensors(state: Any, path: str):
    """Yield (path, tensor or array) for every leaf of `state`; refuse leaves that cannot be measured."""
    if state is None:
        return
    if isinstance(state, np.ndarray) and state.dtype == object:
        raise _unmeasurable(path, "an array of Python objects")
    if isinstance(state, (torch.Tensor, np.ndarray)):
        yield path, state
    elif isinstance(state, bool) or (isinstance(state, numbers.Integral) and abs(state) <= FLOAT32_EXACT_INT):
        yield path, torch.zeros(1)  # a Python number counts as one value
    elif isinstance(state, numbers.Integral):
        raise _unmeasurable(path, "an integer beyond float32's exact range (|n| > 2^24)")
    elif isinstance(state, numbers.Real):
        yield path, torch.zeros(1)  # read gets it rounded to float32 (`sealed`)
    elif isinstance(state, (tuple, list)):
        for index, item in enumerate(state):
            yield from _tensors(item, f"{path}[{index}]")
    elif isinstance(state, dict):
        for key, item in state.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
                raise _unmeasurable(f"{path}[{str(key)[:40]!r}]", f"a key that is not a name of at most "
                                    f"{MAX_KEY_LENGTH} characters")
            yield from _tensors(item, f"{path}[{key!r}]")
    elif dataclasses.is_dataclass(state) and not isinstance(state, type):
        for field in dataclasses.fields(state):
            yield from _tensors(getattr(state, field.name), f"{path}.{field.name}")
    else:
        raise _unmeasurable(path, f"of type {type(state).__name__}")


MAX_KEY_LENGTH = 100  # a dict key names a part of the state; it is not a place to keep values


def sealed(state: Any) -> Any:
    """A copy of a measured `state` that holds only what `measure_state` counts, for `read`: new plain
    tensors and arrays (no attributes, no storage shared with the original), plain lists, tuples and
    dicts, dataclasses rebuilt from their fields, Python floats rounded to float32. Nothing kept beside
    the measured values (an attribute set on a tensor, a cache keyed by the state's identity) reaches
    the read. Tensor subclasses are refused: their behaviour is not measured."""
    if state is None or isinstance(state, (bool, numbers.Integral)):
        return state
    if isinstance(state, numbers.Real):
        return float(np.float32(state))
    if isinstance(state, torch.Tensor):
        if type(state) not in (torch.Tensor, torch.nn.Parameter):
            raise MembenchError(f"the memory state holds a {type(state).__name__}, a tensor subclass; return plain "
                                "torch.Tensor values")
        return state.detach().clone()
    if isinstance(state, np.ndarray):
        return np.array(state, copy=True, subok=False)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return type(state)._make(sealed(item) for item in state)
    if isinstance(state, (tuple, list)):
        return (tuple if isinstance(state, tuple) else list)(sealed(item) for item in state)
    if isinstance(state, dict):
        return {key: sealed(item) for key, item in state.items()}
    fields = {field.name: sealed(getattr(state, field.name)) for field in dataclasses.fields(state) if field.init}
    return dataclasses.replace(state, **fields)


def measure_state(state: Any, batch_size: int) -> int:
    """float32 values per episode held by `state` from a write of `batch_size` episodes.

    Each distinct storage counts once, as ceil(bytes / 4); a tensor whose first dimension is
    `batch_size` shares its storage among the episodes, any other tensor counts whole for each.
    """
    seen: set[tuple[str, int]] = set()
    total = 0.0
    for path, leaf in _tensors(state, "state"):
        if isinstance(leaf, np.ndarray):
            owner = leaf.base if isinstance(leaf.base, np.ndarray) else leaf
            key, nbytes = ("numpy", id(owner)), owner.nbytes
        else:
            if leaf.layout != torch.strided:
                raise MembenchError(f"the memory state holds {path} with layout {leaf.layout}; return dense tensors")
            storage = leaf.untyped_storage()
            key, nbytes = (str(leaf.device), storage.data_ptr()), storage.nbytes()
        if key in seen:
            continue
        seen.add(key)
        per_episode = leaf.ndim >= 1 and leaf.shape[0] == batch_size
        total += nbytes / batch_size if per_episode else nbytes
    return math.ceil(total / 4 - 1e-9)


def check_measured(state: Any, batch_size: int, declared: int, budget: int, model_name: str) -> int:
    """Measure `state`; OverBudgetError when it exceeds `budget` or differs from `declared`."""
    measured = measure_state(state, batch_size)
    if measured > budget or measured != declared:
        problem = "exceeds the budget" if measured > budget else "differs from what the model declares"
        raise OverBudgetError(
            f"model '{model_name}': its written state holds {measured} float32 values per episode, which {problem} "
            f"(declared {declared}, measured {measured}, budget {budget}); memory_floats must count exactly what "
            "write returns, within the budget")
    return measured
