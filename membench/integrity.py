"""Isolated writes: the runner's check that a model keeps what it learns in the state alone.

`audit_write` is run once per run, on a small probe batch, before any training or
evaluation. It refuses a model that

- changes itself while writing (a parameter, buffer, submodule or plain attribute differs
  before and after `write`), or
- reads anything but the state it is given: reading one state before and after another
  batch was written must give identical retrievals,

and it measures the probe's state against the declared count and the budget.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from membench.budget import check_measured, sealed
from membench.errors import MembenchError
from membench.interface import AssociativeMemory

_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping (hooks, registries, training)


def _frozen(value: Any) -> Any:
    """A copy of `value` that later changes to the original cannot reach."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_frozen(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    if isinstance(value, nn.Module):
        return ("module", id(value))  # submodules are compared through their own attributes
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 (anything that cannot be copied is compared by identity)
        return ("object", id(value))


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        return (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.shape == after.shape
                and before.dtype == after.dtype and torch.equal(before, after.detach().to(before.device)))
    if isinstance(before, np.ndarray) or isinstance(after, np.ndarray):
        return isinstance(after, np.ndarray) and isinstance(before, np.ndarray) and np.array_equal(before, after)
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        return type(before) is type(after) and len(before) == len(after) and all(map(_same, before, after))
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before)
    try:
        return bool(before == after)
    except Exception:  # noqa: BLE001
        return before is after


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every parameter, buffer, submodule name and plain attribute of `model`, copied."""
    state: dict[str, Any] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        state[f"{dot}<submodules>"] = tuple(module._modules)
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            state[dot + name] = _frozen(tensor)
        for name, value in vars(module).items():
            if name not in _MODULE_INTERNALS:
                state[dot + name] = _frozen(value)
    return state


def changed_attribute(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The first attribute that differs between two snapshots, or None."""
    for name in sorted(before.keys() | after.keys()):
        if name not in before or name not in after or not _same(before[name], after[name]):
            return name
    return None


def audit_write(model: AssociativeMemory, patterns: torch.Tensor, queries: torch.Tensor, other: torch.Tensor,
                declared: int, budget: int, model_name: str) -> int:
    """Check isolated writes on a probe batch; return the measured state's count per episode.

    patterns, queries (B, N, *S): a probe batch; other (B, N, *S): different patterns written in
    between two reads of the probe's state. Raises MembenchError (or OverBudgetError) on a violation.
    """
    devices = [patterns.device] if patterns.device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            before = snapshot(model)
            state = model.write(patterns)
            changed = changed_attribute(before, snapshot(model))
            if changed:
                raise MembenchError(
                    f"model '{model_name}' changed '{changed}' while writing; write must leave the model unchanged "
                    "and return everything it keeps in the state it returns")
            measured = check_measured(state, patterns.shape[0], declared, budget, model_name)
            torch.manual_seed(0)
            first = model.read(sealed(state), queries)
            model.write(other)
            torch.manual_seed(0)
            second = model.read(sealed(state), queries)
    finally:
        model.train(was_training)
    if first.shape != second.shape or not torch.allclose(first, second, rtol=1e-5, atol=1e-5, equal_nan=True):
        raise MembenchError(
            f"model '{model_name}' retrieved differently from the same state after another batch was written; "
            "read must depend only on the state and the queries it is given (nothing kept on the model or elsewhere)")
    return measured
