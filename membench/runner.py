"""Runs: build task and model, check the budget, meta-train if needed, evaluate, store.

Data flow of one run (a `RunSpec`):
    task = make_task(spec.task)                      # episodes + error measure
    model = ModelClass.from_spec(task.spec, budget)  # sized to the budget
    check_budget(...)                                # refuse over-budget models
    meta_train(...)                                  # learned models only; cached checkpoint
    errors = task.errors(model.read(model.write(patterns), queries), patterns)
    ResultsStore.save(record)                        # atomic; finished runs are skipped
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import membench
from membench.budget import check_budget
from membench.errors import MembenchError, TrainingPaused
from membench.interface import AssociativeMemory
from membench.registry import resolve_model
from membench.store import ResultsStore, write_text_atomic
from membench.suites import RunSpec
from membench.tasks import Task, make_task
from membench.training import meta_train

EVAL_STREAM = 104729  # offset of the evaluation generator's seed from the run seed


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; fixes float32 matmul precision (no TF32)."""
    if device not in ("auto", "cpu", "cuda"):
        raise MembenchError(f"unknown device '{device}'. Valid devices: auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise MembenchError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _git_commit() -> str | None:
    """HEAD of this checkout; $MEMBENCH_GIT_COMMIT where the code was copied without .git (remote machines)."""
    if os.environ.get("MEMBENCH_GIT_COMMIT"):
        return os.environ["MEMBENCH_GIT_COMMIT"]
    try:
        root = Path(membench.__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts stored with every record."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "membench": membench.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


def default_checkpoint_dir() -> Path:
    """$MEMBENCH_CACHE/checkpoints, default ~/.cache/membench/checkpoints (shared by all output dirs)."""
    return Path(os.environ.get("MEMBENCH_CACHE", Path.home() / ".cache" / "membench")).expanduser() / "checkpoints"


def build_model(spec: RunSpec, task: Task) -> AssociativeMemory:
    cls = resolve_model(spec.model)
    try:
        return cls.from_spec(task.spec, spec.budget, spec.preset, **spec.options)
    except TypeError as exc:
        raise MembenchError(f"cannot build model '{spec.model}' with options {spec.options}: {exc}") from exc


def checkpoint_key(spec: RunSpec, model: AssociativeMemory, task: Task, train_config: Any) -> str:
    """Checkpoints are shared by every run whose training would be identical."""
    task_config = dict(task.config())
    if train_config.num_patterns:
        task_config.pop("num_patterns")  # trained on a set of N: one checkpoint for all
    payload = {"model": spec.model, "model_config": model.config(), "task": task_config, "preset": spec.preset,
               "train": dataclasses.asdict(train_config), "seed": spec.seed, "budget": spec.budget}
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{spec.model.replace(':', '-')}-{spec.preset}-{digest}"


def evaluate(model: AssociativeMemory, task: Task, spec: RunSpec, device: torch.device,
             episodes_per_batch: int = 64) -> list[float]:
    """Per-query errors over ceil(queries / N) fresh test episodes (query every written pattern once)."""
    generator = torch.Generator().manual_seed(spec.seed + EVAL_STREAM)
    torch.manual_seed(spec.seed)  # models that draw random numbers (e.g. update orders) get the same ones
    num_episodes = math.ceil(spec.queries / task.spec.num_patterns)
    errors: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, num_episodes, episodes_per_batch):
            batch = min(episodes_per_batch, num_episodes - start)
            episodes = task.sample(batch, generator, split="test").to(device)
            retrievals = model.read(model.write(episodes.patterns), episodes.queries)
            assert retrievals.shape == episodes.queries.shape, (
                f"{spec.model}.read returned shape {tuple(retrievals.shape)}, expected {tuple(episodes.queries.shape)}")
            if not torch.isfinite(retrievals).all():
                raise MembenchError(f"model '{spec.model}' returned NaN or inf retrievals (N={task.spec.num_patterns}, "
                                    f"seed={spec.seed}); its read is numerically unstable, so no record was written")
            errors.extend(task.errors(retrievals, episodes.patterns).flatten().cpu().tolist())
    return errors


def execute(spec: RunSpec, store: ResultsStore, device: torch.device, checkpoint_dir: Path,
            command: str, progress: bool = True, train_time_limit_s: float | None = None) -> dict[str, Any]:
    """Run one spec to completion and save its record; returns the record.

    Raises TrainingPaused (no record written) when meta-training reaches `train_time_limit_s`.
    """
    started = time.perf_counter()
    task = make_task(spec.task)
    torch.manual_seed(spec.seed)  # initial weights depend on the run's seed, not on earlier runs in this process
    model = build_model(spec, task).to(device)
    memory_floats = check_budget(model, task.spec, spec.budget, spec.model)
    training: dict[str, Any] | None = None
    if model.trainable:
        train_config = model.train_config(spec.preset)
        key = checkpoint_key(spec, model, task, train_config)
        result = meta_train(model, task, train_config, checkpoint_dir / f"{key}.pt", device, spec.seed, progress,
                            time_limit_s=train_time_limit_s)
        if not result.finished:
            raise TrainingPaused(
                f"meta-training of '{spec.model}' (preset {spec.preset}) stopped at step {result.steps} of "
                f"{train_config.steps} at the training time limit ({train_time_limit_s:g} s); its checkpoint is "
                f"{result.checkpoint}. Rerun the same command to continue; finished runs are kept.")
        curve_path = store.training_dir / f"{key}.csv"
        import pandas as pd

        write_text_atomic(curve_path, pd.DataFrame(result.curve).to_csv(index=False))
        training = {"checkpoint_key": key, "steps": result.steps, "train_time_s": round(result.train_time_s, 2),
                    "config": dataclasses.asdict(train_config), "curve": str(curve_path.relative_to(store.root))}
    eval_started = time.perf_counter()
    errors = evaluate(model, task, spec, device)
    record = {
        "run_id": spec.run_id,
        **dataclasses.asdict(spec),
        "task_unit": task.error_unit,
        "model_config": model.config(),
        "memory_floats": memory_floats,
        "num_queries": len(errors),
        "mean_error": float(np.mean(errors)),
        "errors": errors,
        "training": training,
        "eval_time_s": round(time.perf_counter() - eval_started, 3),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "command": command,
        "environment": environment(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.save(record)
    return record


def run_all(specs: list[RunSpec], out_dir: Path, device: str = "auto", force: bool = False,
            checkpoint_dir: Path | None = None, command: str | None = None, progress: bool = True,
            on_record: Callable[[dict[str, Any]], None] | None = None,
            train_time_limit_s: float | None = None) -> list[dict[str, Any]]:
    """Execute every spec not already finished in `out_dir` (all of them with `force`).

    `train_time_limit_s` bounds the meta-training wall time of each model in this call.
    """
    torch_device = resolve_device(device)
    store = ResultsStore(out_dir)
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir())
    command = command or shlex.join(["membench", *sys.argv[1:]])
    for spec in specs:  # fail fast on unknown names before any work
        resolve_model(spec.model)
        make_task(spec.task)
    todo = [s for s in specs if force or not store.has(s.run_id)]
    records = []
    iterator = todo
    if progress and todo:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="runs", unit="run")
    for spec in iterator:
        if progress and hasattr(iterator, "set_postfix_str"):
            iterator.set_postfix_str(f"{spec.model} N={spec.task['num_patterns']} seed={spec.seed}")
        record = execute(spec, store, torch_device, checkpoint_dir, command, progress, train_time_limit_s)
        records.append(record)
        if on_record:
            on_record(record)
    return records
