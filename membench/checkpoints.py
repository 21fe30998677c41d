"""Trained checkpoints: their file, the per-user cache, the ones the repository ships (results/checkpoints).

A checkpoint is a dict holding at least CHECKPOINT_KEYS, written atomically (`save_checkpoint`), read as data
only (`read_checkpoint`) and loaded into a model and its optimiser (`load_checkpoint`, which sets an unreadable
one aside). A learned run's checkpoint is `<cache>/<checkpoint key>.pt` (`run_identity.checkpoint_key`).
`checkpoint_path` copies a shipped one into the cache first when the cache has none trained as far, so committed
learned rows evaluate (or resume) without retraining; `membench.shipping` writes trained ones into
results/checkpoints as `portable` keeps them (weights only once finished).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

import membench
from membench.errors import MembenchError, out_of_memory
from membench.interface import AssociativeMemory
from membench.records import list_of_mappings, nonnegative_number, training_history
from membench.store import file_lock, warn, write_atomic
from membench.tasks import valid_global_generators

CHECKPOINT_KEYS = ("model", "generator", "step", "elapsed_s", "curve")  # required; "optimizer", "history",
# "config", "parameters" (the names in "model" that are the model's parameters, not buffers), "learned",
# "guard_shares" (the collapse guard's flag and window, membench.training) and "key" (the checkpoint key it was
# trained under, its file's stem) optional
UNREADABLE = (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError)  # what reading a bad file raises


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    write_atomic(path, lambda handle: torch.save(payload, handle))


def _on_cpu(value: Any) -> Any:
    """Tensors (in nested dicts and lists too) on the CPU, floating ones float32."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_on_cpu(item) for item in value]
    return value


def weights_only(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without its optimiser state, every floating tensor float32 on the CPU (a finished one
    shipped)."""
    return {**{k: v for k, v in saved.items() if k != "optimizer"},
            "model": {name: _on_cpu(tensor) for name, tensor in saved["model"].items()}}


def layout(saved: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The weights' names and shapes of a checkpoint's model."""
    return {name: tuple(value.shape) for name, value in (saved.get("model") or {}).items() if hasattr(value, "shape")}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a model's weights as shipped (`weights_only`: float32 on the CPU): each tensor's name, shape,
    dtype and values. The same for a checkpoint wherever it is cached or shipped; another for other weights."""
    digest = hashlib.sha1()
    for name in sorted(state):
        tensor = _on_cpu(state[name]).contiguous()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


RESUME_STATE_MAX_MB = 8.0  # an unfinished checkpoint carried elsewhere keeps AdamW's state up to this size (half a volume)


def portable(saved: dict[str, Any]) -> dict[str, Any]:
    """What is shipped or carried of a checkpoint: the weights (`weights_only`) and, while its training is
    unfinished, its optimiser state (on the CPU), so the next machine's AdamW continues where this one
    stopped, unless its tensors would then hold more than RESUME_STATE_MAX_MB (then it restarts there, and
    the history's stretch says so)."""
    light = weights_only(saved)
    unfinished = saved["step"] < ((saved.get("config") or {}).get("steps") or 0)
    if not unfinished or "optimizer" not in saved:
        return light
    carried = {**light, "optimizer": _on_cpu(saved["optimizer"])}
    return carried if _tensor_bytes(carried) <= RESUME_STATE_MAX_MB * 2**20 else light


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in `value` (nested dicts and lists): what a saved checkpoint's size is made of."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(map(_tensor_bytes, value.values()))
    if isinstance(value, list):
        return sum(map(_tensor_bytes, value))
    return 0


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The training checkpoint at `path`, on the CPU, unpickled as data only (tensors, containers, numbers, strings: a
    checkpoint carried from another machine runs no code). Raises on a file that is not one; an OSError only where
    the file system fails (the bytes are read first, so torch's OSError on a short file is the file's)."""
    data = Path(path).read_bytes()
    try:
        with torch.serialization.safe_globals([TorchVersion]):  # older checkpoints' history holds torch.__version__
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except OSError as exc:  # e.g. a truncated file of under 64 KiB: "[Errno 22] Invalid argument"
        raise pickle.UnpicklingError(f"not a checkpoint file ({type(exc).__name__}: {exc})") from exc
    except (*UNREADABLE, MemoryError, ImportError):  # the file's own errors, or this machine's: as they are
        raise
    except Exception as exc:  # torch's data-only unpickler fails on some stray bytes with IndexError, KeyError...
        raise pickle.UnpicklingError(f"not a checkpoint file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(saved, dict) or any(key not in saved for key in CHECKPOINT_KEYS):
        raise ValueError("not a membench training checkpoint")
    problem = _field_problem(saved)
    if problem:
        raise ValueError(f"not a membench training checkpoint ({problem})")
    return saved


def _field_problem(saved: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's fields (None: nothing), so that a damaged one counts as unreadable
    instead of failing later inside training, a report or a session's packing."""
    if not isinstance(saved["model"], dict) or not all(isinstance(t, torch.Tensor) for t in saved["model"].values()):
        return "model is not a state dict of tensors"
    if not isinstance(saved.get("key", ""), str):
        return "key is not a checkpoint key"
    names = saved.get("parameters")
    if names is not None and not (isinstance(names, list) and all(name in saved["model"] for name in names)):
        return "parameters is not a list of the model's tensors"
    broken = [name for name in (saved["model"] if names is None else names)  # (before parameters were listed: all)
              if saved["model"][name].is_floating_point() and saved["model"][name].isnan().any()]
    if broken:
        return (f"its {'tensors' if names is None else 'parameters'} {', '.join(broken[:3])} hold NaN values, which "
                "training stops before saving")
    try:
        torch.Generator().set_state(saved["generator"])  # refuses another type, dtype or size
    except (RuntimeError, TypeError):
        return "generator is not a random generator's state"
    if not isinstance(saved["step"], int) or isinstance(saved["step"], bool) or saved["step"] < 0:
        return "step is not a count of updates"
    if not nonnegative_number(saved["elapsed_s"]):
        return "elapsed_s is not a number of seconds"
    if not list_of_mappings(saved["curve"]):
        return "curve is not a list of rows"
    if saved.get("history") is not None and not training_history(saved["history"]):
        return "history is not a list of stretches (device, device_name, steps, train_time_s, commit)"
    if saved.get("config") is not None and not isinstance(saved["config"], dict):
        return "config is not a training configuration"
    planned = (saved.get("config") or {}).get("steps")
    if planned is not None and (not isinstance(planned, int) or isinstance(planned, bool) or planned < 0):
        return "config's steps is not a count of updates"
    if planned is not None and saved["step"] > planned:
        return f"step {saved['step']} is beyond the {planned} its configuration plans"
    if "optimizer" in saved and not isinstance(saved["optimizer"], dict):
        return "optimizer is not an optimiser's state"
    if "global_generators" in saved and not valid_global_generators(saved["global_generators"]):
        return "global_generators is not the global generators' states"
    shares = saved.get("guard_shares", [])
    if not (isinstance(shares, list) and all(type(share) is float for share in shares)):
        return "guard_shares is not a list of error shares"
    return None


def _on_this_device(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An AdamW state saved by another Stepper, with this one's `capturable` (True only under CUDA graphs) and a
    float learning rate (`Stepper.after_load` makes it a device tensor where graphs need one): a state saved
    under graphs on CUDA would otherwise refuse to step on a CPU, and one saved on a CPU keep graphs off."""
    groups = state["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"{len(groups)} parameter groups saved, {len(optimizer.param_groups)} expected")
    params = [param for group in optimizer.param_groups for param in group["params"]]
    ids = [index for group in groups for index in group["params"]]
    if len(ids) != len(params):
        raise ValueError(f"optimiser state of {len(ids)} parameters saved, {len(params)} expected")
    for index, param in zip(ids, params):  # AdamW's moments, shaped as their parameters (its step count: a scalar)
        for key, value in state["state"].get(index, {}).items():
            if key != "step" and isinstance(value, torch.Tensor) and value.shape != param.shape:
                raise ValueError(f"optimiser state {key} of shape {tuple(value.shape)} saved for a parameter of "
                                 f"shape {tuple(param.shape)}")
    return {**state, "param_groups": [{**saved, "capturable": current["capturable"], "lr": float(saved["lr"])}
                                      for saved, current in zip(groups, optimizer.param_groups)]}


def load_weights(model: AssociativeMemory, weights: dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(weights)`; ValueError when a parameter then holds NaN or infinite values (buffers
    may hold infinities by design: a running maximum's start, a mask)."""
    model.load_state_dict(weights)
    broken = [name for name, value in model.named_parameters() if not torch.isfinite(value).all()]
    if broken:
        raise ValueError(f"its weights {', '.join(broken[:3])} hold NaN or infinite values")


def load_checkpoint(path: Path, model: AssociativeMemory, optimizer: torch.optim.Optimizer | None = None,
                    set_aside: bool = True) -> dict[str, Any] | None:
    """Load `path` into `model` (and `optimizer`, when the checkpoint holds its state) wherever they are; return
    the checkpoint as read, on the CPU, or None when there is none. (AdamW then keeps a step counter on the CPU
    where it is not capturable: one on CUDA would be read back to the host every update.)

    A checkpoint that cannot be read, does not fit the model or holds a NaN or infinite parameter (never saved
    by training, which stops when its loss diverges) is renamed to `<name>.corrupt`
    (reported on stderr) and None is returned, so the caller trains afresh; with `set_aside=False` (a caller
    that only reads, such as a figure) it is left where it is, reported all the same. A failure of this machine
    while loading (out of memory, a CUDA error, the file system) leaves it where it is and raises MembenchError.
    """
    path = Path(path)
    if not path.exists():
        return None
    before = {name: value.clone() for name, value in model.state_dict().items()}
    try:
        saved = read_checkpoint(path)
        load_weights(model, saved["model"])
        if optimizer is not None and "optimizer" in saved:
            optimizer.load_state_dict(_on_this_device(saved["optimizer"], optimizer))
    except (*UNREADABLE, KeyError, TypeError) as exc:  # or a file that does not fit the model
        model.load_state_dict(before)  # afresh means from the model's own initial values
        if _machine_error(exc):
            raise MembenchError(f"could not load checkpoint {path} on this machine ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]}); it is left as it is: free the memory or "
                                "the device and rerun the command") from None
        problem = (f"checkpoint {path} is unreadable or does not fit {type(model).__name__} ({type(exc).__name__}: "
                   f"{' '.join(str(exc).split())[:300]})")
        if not set_aside:
            warn(f"{problem}; left as it is: delete it and rerun the command that trained it with --force")
            return None
        warn(f"{problem}; moved it to {_set_aside(path)} and training afresh")
        return None
    return saved


def _machine_error(exc: BaseException) -> bool:
    """Whether loading failed for this machine (out of memory, a CUDA error, the file system), not for the file:
    such a checkpoint is not set aside."""
    return out_of_memory(exc) or isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "CUDA" in str(exc))


def _set_aside(path: Path) -> Path:
    """Rename the unusable checkpoint `path` to `<name>.corrupt` (`.corrupt-2`, … when earlier ones are kept there)
    for inspection; returns the new path."""
    aside, number = path.with_name(path.name + ".corrupt"), 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{number}")
    path.replace(aside)
    return aside


def default_checkpoint_dir() -> Path:
    """$MEMBENCH_CACHE/checkpoints, default (unset or empty) ~/.cache/membench/checkpoints (shared by all output
    dirs)."""
    return Path(os.environ.get("MEMBENCH_CACHE") or Path.home() / ".cache" / "membench").expanduser() / "checkpoints"


SHIPPED_CHECKPOINTS = Path(membench.__file__).resolve().parent.parent / "results" / "checkpoints"


def checkpoint_path(key: str, checkpoint_dir: Path, model: torch.nn.Module | None = None) -> Path:
    """`checkpoint_dir/<key>.pt`. When the repository ships that checkpoint (results/checkpoints) and the
    cache has none, an unreadable one or one trained fewer steps, the shipped one is copied in first, so
    committed learned rows evaluate (or resume from the furthest training) without retraining; where the two
    hold other weights' names or shapes (a built-in model's code changed under the same key), only when the
    shipped one fits `model` and the cached one does not (without `model`, the cache's training stays)."""
    path = Path(checkpoint_dir) / f"{key}.pt"
    shipped = SHIPPED_CHECKPOINTS / f"{key}.pt"
    if shipped.exists():
        with file_lock(path.with_name(path.name + ".copy.lock")):  # processes sharing the cache take turns
            cached, ships = (trained_steps(path) if path.exists() else None), trained_steps(shipped)
            if ships == -1:  # damaged in the checkout: left for the user, never copied
                warn(f"shipped checkpoint {shipped} is unreadable; left as it is and not used: restore it "
                     f"(`git checkout -- {shipped}`), or delete it to train afresh")
            elif (cached is not None and 0 <= cached < ships and (here := layout(read_checkpoint(path)))
                  != (there := layout(read_checkpoint(shipped))) and not _fits_only(there, here, model)):
                warn(f"shipped checkpoint {shipped} holds other weights (names or shapes) than the cached {path}, "
                     "whose training is kept and not replaced: delete the one that no longer fits the model")
            elif cached is None or cached < ships:
                if cached == -1:  # kept for inspection, as training keeps the unreadable ones it finds
                    warn(f"checkpoint {path} is unreadable; moved it to {_set_aside(path)} and took the shipped "
                         f"{shipped}")
                write_atomic(path, lambda handle: handle.write(shipped.read_bytes()))
    return path


def _fits_only(shipped: dict[str, tuple[int, ...]], cached: dict[str, tuple[int, ...]],
               model: torch.nn.Module | None) -> bool:
    """Whether the layout `shipped` is `model`'s and `cached` is not."""
    if model is None:
        return False
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return shipped == own != cached


def trained_steps(path: Path) -> int:
    """The training steps of the checkpoint at `path`; -1 when it cannot be read as one."""
    try:
        return read_checkpoint(path)["step"]
    except UNREADABLE:
        return -1


def readable_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`; None where there is no file, or (with a warning) where it cannot be read as one."""
    if not path.exists():
        return None
    try:
        return read_checkpoint(path)
    except UNREADABLE as exc:
        warn(f"checkpoint {path} is unreadable ({type(exc).__name__}): left as it is; delete it and rerun the "
             f"command that trained it")
        return None


def saved_bytes(checkpoint: dict[str, Any]) -> bytes:
    """`checkpoint` as the bytes of its file (torch.save)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()
