"""Isolated writes: the runner's check that a model keeps what it learns in the state alone.

`audit_write` is run on a small probe batch before any training and, for a learned model, again
on the trained model before evaluation. It refuses a model that

- changes itself while writing (a parameter, buffer, submodule or plain attribute differs
  before and after `write`), or
- reads anything but the state it is given: reading one state before and after another
  batch was written must give identical retrievals,
- lets episodes of one batch reach each other: an episode's retrievals must not change when
  the other episodes of its batch do,

and it measures the probe's state against the declared count and the budget and returns the
`StateContract` every later write of the run must meet.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch import nn

from membench.budget import StateContract, check_measured, sealed, state_layout
from membench.errors import MembenchError
from membench.interface import AssociativeMemory
from membench.tasks import forked_generators, seed_all

_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping (hooks, registries, training)


def _frozen(value: Any, seen: frozenset[int] = frozenset()) -> Any:
    """A copy of `value` that later changes to the original cannot reach, comparable with `_same`."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_frozen(v, seen) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_frozen(v, seen) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v, seen) for k, v in value.items()}
    if isinstance(value, nn.Module):  # one held in a container: compared through its own attributes
        return ("module", id(value)) if id(value) in seen else ("module", snapshot(value, seen | {id(value)}))
    try:
        return ("pickled", _pickled(value))  # unchanged objects (generators, NaNs, plain classes) compare equal
    except Exception:  # noqa: BLE001 (anything that cannot be pickled is compared by identity)
        return ("object", id(value))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


class _ValuePickler(pickle.Pickler):
    """Pickles tensors and torch generators as their bytes, so equal values give equal pickles (torch's own
    pickling names storages by their address)."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return "tensor", str(obj.dtype), tuple(obj.shape), _bits(obj).numpy().tobytes()
        if isinstance(obj, torch.Generator):
            return "generator", obj.get_state().numpy().tobytes()
        return None


def _pickled(value: Any) -> bytes:
    buffer = io.BytesIO()
    _ValuePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _same(before: Any, after: Any) -> bool:
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):  # bit for bit, NaNs included
        return (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.shape == after.shape
                and before.dtype == after.dtype and torch.equal(_bits(before), _bits(after)))
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        return type(before) is type(after) and len(before) == len(after) and all(map(_same, before, after))
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before)
    return before == after


def snapshot(model: nn.Module, seen: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Every parameter, buffer, submodule name and plain attribute of `model`, copied."""
    state: dict[str, Any] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    seen = seen | {id(module) for module in modules.values()}
    for prefix, module in modules.items():
        dot = f"{prefix}." if prefix else ""
        state[f"{dot}<submodules>"] = tuple(module._modules)
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            state[dot + name] = _frozen(tensor, seen)
        for name, value in vars(module).items():
            if name not in _MODULE_INTERNALS:
                state[dot + name] = _frozen(value, seen)
    return state


def changed_attribute(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The first attribute that differs between two snapshots, or None."""
    for name in sorted(before.keys() | after.keys()):
        if name not in before or name not in after or not _same(before[name], after[name]):
            return name
    return None


def _retrieved(model: AssociativeMemory, state: Any, queries: torch.Tensor, model_name: str) -> torch.Tensor:
    """`model.read` of a sealed copy of `state` and of a copy of `queries`, from the same random numbers each
    time; MembenchError unless it is a plain floating tensor shaped like the queries."""
    seed_all(0)
    return checked_retrievals(model.read(sealed(state), queries.clone()), queries, model_name)


def checked_retrievals(retrievals: Any, queries: torch.Tensor, model_name: str) -> torch.Tensor:
    """`retrievals` on the queries' device; MembenchError unless `read` returned a plain floating
    torch.Tensor (no subclass: its methods could change how it is scored; dense, with values) shaped like `queries`."""
    if (type(retrievals) is not torch.Tensor or retrievals.shape != queries.shape or not retrievals.is_floating_point()
            or retrievals.layout != torch.strided or retrievals.device.type == "meta"):
        got = (f"a {type(retrievals).__name__} of shape {tuple(retrievals.shape)} and dtype {retrievals.dtype}"
               + (f", layout {retrievals.layout}" if retrievals.layout != torch.strided else "")
               + (" on the meta device (no values)" if retrievals.device.type == "meta" else "")
               if isinstance(retrievals, torch.Tensor) else f"a {type(retrievals).__name__}")
        raise MembenchError(f"model '{model_name}': read returned {got}, expected a plain, dense floating "
                            f"torch.Tensor of shape {tuple(queries.shape)} (one retrieval per query)")
    return retrievals.detach().to(queries.device)


def kept(state: Any, batch_size: int, contract: StateContract) -> Any:
    """The sealed copy of a written `state` that a run measures, reads and keeps: `contract` must hold for the
    state as written (so a refusal names its parts) and for the copy (so a container that shows the
    measurement other items than it copies is refused)."""
    contract.check(state, batch_size)
    copy = sealed(state)
    contract.check(copy, batch_size)
    return copy


def write_and_read(model: AssociativeMemory, patterns: torch.Tensor, queries: torch.Tensor, contract: StateContract,
                   model_name: str, which: str, read_seed: int | None = None) -> tuple[Any, torch.Tensor]:
    """A scored batch: `model` writes a copy of `patterns` (B, N, *S), its state is held to the run's `contract`
    (`kept`), and it reads a sealed copy with a copy of `queries`, after seeding the global generators with
    `read_seed` if given (as the fresh-process read does); returns (the kept state, retrievals). MembenchError
    when the retrievals are not finite (`which`: the batch, in that message)."""
    state = kept(model.write(patterns.clone()), patterns.shape[0], contract)
    if read_seed is not None:
        seed_all(read_seed)
    retrievals = checked_retrievals(model.read(sealed(state), queries.clone()), queries, model_name)
    if not torch.isfinite(retrievals).all():
        raise MembenchError(f"model '{model_name}' returned NaN or inf retrievals {which}; its read is numerically "
                            "unstable (guard its divisions, logs and exponentials), so no record was written")
    return state, retrievals


def audit_write(model: AssociativeMemory, patterns: torch.Tensor, queries: torch.Tensor, other: torch.Tensor,
                declared: int, budget: int, model_name: str) -> StateContract:
    """Check isolated writes on a probe batch; return what every later write of the run must match.

    patterns, queries (B, N, *S): a probe batch of B >= 2 episodes; other (B, N, *S): different patterns,
    written in between two reads of the probe's state and, in place of the probe's first episode and
    then of the others, to check that each episode's retrievals depend on that episode alone. Raises
    MembenchError (or OverBudgetError) on a violation.
    """
    assert patterns.shape[0] >= 2 and other.shape == patterns.shape, "the probe needs two or more episodes"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forked_generators(patterns.device):
            before = snapshot(model)
            seed_all(0)
            state = model.write(patterns.clone())
            changed = changed_attribute(before, snapshot(model))
            if changed:
                raise MembenchError(
                    f"model '{model_name}' changed '{changed}' while writing; write must leave the model unchanged "
                    "and return everything it keeps in the state it returns")
            measured = check_measured(state, patterns.shape[0], declared, budget, model_name)
            contract = StateContract(model_name, measured, budget, state_layout(state, patterns.shape[0], model_name))
            state = kept(state, patterns.shape[0], contract)
            first = _retrieved(model, state, queries, model_name)
            seed_all(0)
            kept(model.write(other.clone()), other.shape[0], contract)
            second = _retrieved(model, state, queries, model_name)
            alone = []  # the first episode with the others replaced, then the others with the first replaced
            for mixed in (torch.cat([patterns[:1], other[1:]]), torch.cat([other[:1], patterns[1:]])):
                seed_all(0)
                state = kept(model.write(mixed), patterns.shape[0], contract)
                alone.append(_retrieved(model, state, queries, model_name))
    finally:
        model.train(was_training)
    if not torch.allclose(first, second, rtol=1e-5, atol=1e-5, equal_nan=True):
        raise MembenchError(
            f"model '{model_name}' retrieved differently from the same state after another batch was written; "
            "read must depend only on the state and the queries it is given (nothing kept on the model or elsewhere)")
    if not (torch.allclose(first[:1], alone[0][:1], rtol=1e-5, atol=1e-5, equal_nan=True)
            and torch.allclose(first[1:], alone[1][1:], rtol=1e-5, atol=1e-5, equal_nan=True)):
        raise MembenchError(
            f"model '{model_name}' retrieved differently for an episode when the other episodes of its batch "
            "changed; each episode's write and read must depend on that episode alone")
    return contract
