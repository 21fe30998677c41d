"""Trained checkpoints: the per-user cache, the ones the repository ships (results/checkpoints), and shipping.

A learned run's checkpoint is `<cache>/<checkpoint key>.pt` (`runner.checkpoint_key`). `checkpoint_path`
copies a shipped one into the cache first when the cache has none trained as far, so committed learned rows
evaluate (or resume) without retraining; `ship_checkpoints` writes trained ones into results/checkpoints as
`training.portable` keeps them (weights only once finished).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch

import membench
from membench.errors import MembenchError
from membench.store import ResultsStore, warn, write_atomic
from membench.training import portable, read_checkpoint


def default_checkpoint_dir() -> Path:
    """$MEMBENCH_CACHE/checkpoints, default ~/.cache/membench/checkpoints (shared by all output dirs)."""
    return Path(os.environ.get("MEMBENCH_CACHE", Path.home() / ".cache" / "membench")).expanduser() / "checkpoints"


SHIPPED_CHECKPOINTS = Path(membench.__file__).resolve().parent.parent / "results" / "checkpoints"


def checkpoint_path(key: str, checkpoint_dir: Path) -> Path:
    """`checkpoint_dir/<key>.pt`. When the repository ships that checkpoint (results/checkpoints) and the
    cache has none, an unreadable one or one trained fewer steps, the shipped one is copied in first, so
    committed learned rows evaluate (or resume from the furthest training) without retraining."""
    path = Path(checkpoint_dir) / f"{key}.pt"
    shipped = SHIPPED_CHECKPOINTS / f"{key}.pt"
    if shipped.exists() and (not path.exists() or _trained_steps(path) < _trained_steps(shipped)):
        write_atomic(path, lambda handle: handle.write(shipped.read_bytes()))
    return path


def _trained_steps(path: Path) -> float:
    """The training steps of the checkpoint at `path`; -1 when it cannot be read as one."""
    try:
        return read_checkpoint(path)["step"]
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return -1


def ship_checkpoints(out_dir: Path | None, checkpoint_dir: Path, files: Sequence[Path] = (),
                     target: Path | None = None, max_mb: float = 50.0) -> list[Path]:
    """Ship into `target` (default: SHIPPED_CHECKPOINTS), as `training.portable` (weights only once
    finished; an unfinished one with its optimiser state where small enough), the
    checkpoint of every trained record in `out_dir` (from the cache, else the one shipped earlier) and
    each of `files` (named <checkpoint key>.pt, e.g. paused GPU training carried back from its machine).

    A shipped checkpoint is replaced only by one trained further, or rewritten when it holds more or less
    than `portable` keeps (a finished one's optimiser state) or lacks a history; one from before histories were kept gets one stretch of
    training from the earliest record that used it (`from_record`). Checkpoints over `max_mb` are
    skipped with a warning. Returns the files written."""
    target = Path(target or SHIPPED_CHECKPOINTS)
    sources: dict[str, tuple[Path, dict[str, Any] | None]] = {}  # key -> (file, earliest record using it)
    records = ResultsStore(out_dir).records() if out_dir is not None else []
    for record in sorted(records, key=lambda r: r.get("finished_at", "")):
        key = (record.get("training") or {}).get("checkpoint_key")
        if not key or key in sources:
            continue
        cached, shipped = Path(checkpoint_dir) / f"{key}.pt", target / f"{key}.pt"
        if cached.exists() or shipped.exists():
            sources[key] = (cached if cached.exists() else shipped, record)
        else:
            warn(f"checkpoint {cached} of {record['run_id']} is not in the cache; rerun its command to train it")
    for file in files:
        if not Path(file).is_file():
            raise MembenchError(f"no checkpoint file {file}; give the path of a <checkpoint key>.pt file")
        sources[Path(file).stem] = (Path(file), None)
    written = [_ship_one(source, target / f"{key}.pt", record, max_mb) for key, (source, record) in sources.items()]
    return [path for path in written if path is not None]


def readable_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None (with a warning) when it cannot be read as one."""
    try:
        return read_checkpoint(path)
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        warn(f"checkpoint {path} is unreadable ({type(exc).__name__}): left as it is; delete it and rerun the "
             f"command that trained it")
        return None


def _ship_one(source: Path, dest: Path, record: dict[str, Any] | None, max_mb: float) -> Path | None:
    saved = readable_checkpoint(source)
    if saved is None:
        return None
    if not dest.exists():
        shipped = None
    else:
        shipped = saved if dest.resolve() == source.resolve() else readable_checkpoint(dest)
    if (shipped is not None and ("optimizer" in shipped) == ("optimizer" in portable(shipped))
            and shipped.get("history") is not None and shipped["step"] >= saved["step"]):
        if shipped["step"] > saved["step"]:
            warn(f"kept the shipped {dest.name} (step {shipped['step']}): {source} is not trained as far "
                 f"(step {saved['step']})")
        return None  # what is shipped is portable as it stands and trained at least as far
    if saved.get("history") is None and record is not None:  # before `portable` sizes it
        env = record["environment"]
        saved = {**saved, "history": [{"steps": [0, saved["step"]], "train_time_s": round(saved["elapsed_s"], 2),
                                       "device": env["device"], "device_name": env.get("device_name"),
                                       "commit": env.get("git_commit"), "torch": env.get("torch"),
                                       "from_record": record["run_id"]}]}
    data = saved_bytes(portable(saved))
    if len(data) > max_mb * 2**20:
        warn(f"checkpoint {source} is {len(data) / 2**20:.0f} MB without its optimiser state, over "
             f"{max_mb:g} MB: not shipped")
        return None
    return write_atomic(dest, lambda handle: handle.write(data))


def saved_bytes(checkpoint: dict[str, Any]) -> bytes:
    """`checkpoint` as the bytes of its file (torch.save)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()
