"""Evaluating learned models from their checkpoints as they stand: `membench run --no-train`.

`require_checkpoints` refuses a command, before any run, whose learned runs lack a usable checkpoint;
`as_trained` loads one (finished, or paused at a time limit) in place of meta-training, for `runner._execute`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from membench import checkpoints
from membench.build import build_model
from membench.checkpoints import UNREADABLE, checkpoint_path, load_weights, read_checkpoint
from membench.errors import CheckpointBusy, MembenchError
from membench.interface import AssociativeMemory
from membench.registry import errors_of_user_model, make_task, resolve_model
from membench.run_identity import checkpoint_key
from membench.store import file_lock
from membench.run_spec import RunSpec
from membench.training import TrainResult

NO_TRAIN_FIX = ("run without --no-train to train it (an unreadable one is then set aside), or give the "
                "--checkpoint-dir that holds it")


def as_trained(model: AssociativeMemory, path: Path, config: Any, spec: RunSpec, wait: bool = True) -> TrainResult:
    """Load the checkpoint at `path` into `model` as it stands, for `--no-train` (finished or paused; no step
    is made), as the TrainResult meta-training would have returned. Waits while another process trains it (it
    pauses or finishes first), or with `wait` off raises CheckpointBusy at once, as meta-training does;
    MembenchError for a missing or unusable one, which is left where it is."""
    lock = path.with_name(path.name + ".lock")
    with contextlib.ExitStack() as held:
        if not held.enter_context(file_lock(lock, blocking=False)):
            if not wait:
                raise CheckpointBusy(path.name)
            held.enter_context(file_lock(lock))
        problem = _checkpoint_problem(path)
        if problem is None:
            try:
                saved = read_checkpoint(path)
                load_weights(model, saved["model"])
            except (*UNREADABLE, KeyError, TypeError) as exc:
                why = " ".join(str(exc).split())[:200]
                problem = f"{path} does not fit {type(model).__name__} ({type(exc).__name__}: {why}; left as it is)"
    if problem is not None:
        raise MembenchError(f"--no-train: the checkpoint of '{spec.model}' (preset {spec.preset}, seed {spec.seed}, "
                            f"N={spec.task['num_patterns']}) {problem}; {NO_TRAIN_FIX}")
    return TrainResult(steps=saved["step"], train_time_s=saved["elapsed_s"], curve=saved["curve"],
                       checkpoint=str(path), finished=saved["step"] >= config.steps, history=saved.get("history"),
                       trained_now=(0, 0.0))


def _checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint file at `path` cannot be evaluated as it stands (missing, unreadable), or None."""
    if not path.exists():
        return f"is neither in {path.parent} nor shipped in {checkpoints.SHIPPED_CHECKPOINTS} (no file {path.name})"
    try:
        read_checkpoint(path)
    except UNREADABLE as exc:
        return f"{path} is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}; left as it is)"
    return None


def require_checkpoints(specs: list[RunSpec], checkpoint_dir: Path) -> None:
    """For `--no-train`, before any run: MembenchError naming every learned run of `specs` whose checkpoint is
    missing or unreadable, so that no run is made when some cannot be."""
    problems: dict[str, list[str]] = {}
    for spec in specs:
        if not resolve_model(spec.model).trainable:
            continue
        task = make_task(spec.task)
        with errors_of_user_model(spec.model, "no run was started"):
            model = build_model(spec, task)
        path = checkpoint_path(checkpoint_key(spec, model, task), checkpoint_dir, model)
        problem = _checkpoint_problem(path)
        if problem is not None:
            problems.setdefault(f"'{spec.model}' (preset {spec.preset}, seed {spec.seed}): its checkpoint {problem}",
                                []).append(str(spec.task["num_patterns"]))
    if problems:
        named = "; ".join(f"{what}, at N={','.join(ns)}" for what, ns in problems.items())
        raise MembenchError(f"--no-train: {named}; no run was started: {NO_TRAIN_FIX}")
