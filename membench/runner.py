"""Runs: build task and model, check the budget and isolation, meta-train if needed, evaluate, store.

Data flow of one run (a `RunSpec`):
    task = make_task(spec.task)                           # episodes + error measure
    model = build_model(spec, task)                       # membench.build: preset resolved once; sized to budget
    check_declared(...); contract = audit_write(...)      # declared and measured counts, isolated writes
    meta_train(model, task, model.preset.train, ...)      # learned models only; cached checkpoint (--no-train:
                                                          # as_trained loads it as it stands); audited again
    state = kept(model.write(patterns), B, contract)       # every batch's state sealed, the copy measured
    errors = task.errors(model.read(sealed(state), queries), patterns)  # read: a copy of the measured values
    ResultsStore.save(record)                             # atomic; finished runs are skipped
Several processes may share one output directory: each run is claimed with a lock, so
every run is computed once.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from membench import fresh_read
from membench.budget import StateContract, check_declared
from membench.build import build_model, resolve_device
from membench.checkpoints import checkpoint_path, default_checkpoint_dir, trained_steps, weights_digest
from membench.errors import CheckpointBusy, MembenchError, TrainingPaused, out_of_memory
from membench.integrity import audit_write, write_and_read
from membench.interface import AssociativeMemory
from membench.options import plain_config
from membench.preflight import checked_specs, sized_or_optioned
from membench.provenance import environment, git_state
from membench.registry import is_builtin_model, make_task, model_source_digest, resolve_model, user_model_error
from membench.run_identity import checkpoint_key, is_current, pending
from membench.run_spec import RunSpec
from membench.store import ResultsStore, warn, writable_folder, write_text_atomic
from membench.suites import SUITES
from membench.sweeps import SweepSuite
from membench.tasks import BinaryTask, Task, seed_all
from membench.no_train import as_trained, require_checkpoints
from membench.training import meta_train

EVAL_STREAM = 104729  # offset of the evaluation generator's seed from the run seed
EVAL_EPISODES_PER_BATCH = 64  # episodes sampled (and written) at once in evaluation
PROBE_STREAM = 1299709  # offset of the seed of the probe batches that audit a model's writes
TRAIN_SPLIT_STREAM = 15485863  # offset for the train-split check of trained image models
TRAIN_SPLIT_EPISODES = 100  # train-split episodes evaluated per trained image model (memorisation check)


def audit(model: AssociativeMemory, task: Task, spec: RunSpec, declared: int, device: torch.device
          ) -> StateContract:
    """Isolated-write checks and the measured count on two probe episodes (membench.integrity): before any
    training, and for a learned model again once trained."""
    generator = torch.Generator().manual_seed(spec.seed + PROBE_STREAM)
    probe = task.sample(2, generator, split="train").to(device)
    other = task.sample(2, generator, split="train").to(device)
    return audit_write(model, probe.patterns, probe.queries, other.patterns, declared, spec.budget, spec.model)


def evaluate(model: AssociativeMemory, task: Task, spec: RunSpec, device: torch.device, contract: StateContract,
             split: str = "test", queries: int | None = None) -> list[float]:
    """Per-query errors over ceil(queries / N) fresh episodes of `split` (query every written pattern once).

    Every batch's state must meet the probe's `contract` (count and layout); the model writes and reads
    copies, so the patterns it is scored against are the runner's own. A model from outside membench reads
    every batch from seed 0; the scored retrievals of some test batches (the first, the last and some drawn
    unforeseeably) must come again from their states in a fresh process, with its weights from before these
    writes, and so must those of episodes no seed foresees (membench.fresh_read)."""
    offset = EVAL_STREAM if split == "test" else TRAIN_SPLIT_STREAM
    generator = torch.Generator().manual_seed(spec.seed + offset)
    seed_all(spec.seed)  # models that draw random numbers (e.g. update orders) get the same ones
    num_episodes = math.ceil((queries or spec.queries) / task.spec.num_patterns)
    errors: list[float] = []
    starts = range(0, num_episodes, EVAL_EPISODES_PER_BATCH)
    audited: list[tuple[str, Any, torch.Tensor, torch.Tensor]] = []  # (batch, state, queries, retrievals) to
    #   read again in a fresh process
    audits = split == "test" and not is_builtin_model(type(model))
    chosen = fresh_read.batches_to_audit(len(starts)) if audits else set()
    weights = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()} if audits \
        else {}
    model.eval()
    with torch.no_grad():
        for number, start in enumerate(starts, 1):
            batch = min(EVAL_EPISODES_PER_BATCH, num_episodes - start)
            episodes = task.sample(batch, generator, split=split).to(device)
            state, retrievals = write_and_read(model, episodes.patterns, episodes.queries, contract, spec.model,
                                               f"(N={task.spec.num_patterns}, seed={spec.seed})",
                                               read_seed=0 if audits else None)
            if number == 1 and isinstance(task, BinaryTask):
                _warn_outside_unit_range(retrievals, spec.model)
            if number in chosen:
                audited.append((f"evaluated batch {number} of {len(starts)}", state, episodes.queries, retrievals))
            errors.extend(task.errors(retrievals, episodes.patterns).flatten().cpu().tolist())
    if audits:
        unforeseen = fresh_read.unforeseen_check(spec, model, task, device, contract, errors)
        fresh_read.check(spec, [*audited, ("the episodes drawn unforeseeably", *unforeseen)], device, weights)
    return errors


def _warn_outside_unit_range(retrievals: torch.Tensor, model_name: str) -> None:
    """Warn once a run when a binary task's retrievals, from its first evaluated batch, leave [0, 1] (e.g. a model
    reading in ±1 coding): a bit is wrong when its retrieval is 0.5 or more away from it, so a -1 is a wrong 0."""
    low, high = retrievals.min().item(), retrievals.max().item()
    if low < -0.01 or high > 1.01:
        warn(f"model '{model_name}' read values from {low:.3g} to {high:.3g}, outside [0, 1]: a bit counts as wrong "
             "when its retrieval is 0.5 or more away from it (a -1 is a wrong 0), so return 0/1 coding, not ±1")


def execute(spec: RunSpec, store: ResultsStore, device: torch.device, checkpoint_dir: Path,
            command: str, progress: bool = True, train_time_limit_s: float | None = None,
            wait_for_checkpoint: bool = True, train: bool = True) -> dict[str, Any]:
    """Run one spec to completion and save its record; returns the record.

    Raises TrainingPaused (no record written) when meta-training reaches `train_time_limit_s`, and
    CheckpointBusy when another process trains its checkpoint and `wait_for_checkpoint` is off. With `train`
    off a learned model is evaluated from its checkpoint as it stands (`as_trained`), even a paused one, whose
    record says so (`training.finished`), and a MembenchError is raised when it has none. An error
    raised in the code of a model from outside membench becomes a MembenchError naming its line; a built-in
    model's, one when memory ran out or the run has options, and any model's when memory ran out
    (`membench.preflight.sized_or_optioned`).
    """
    try:
        return _execute(spec, store, device, checkpoint_dir, command, progress, train_time_limit_s,
                        wait_for_checkpoint, train)
    except (MembenchError, CheckpointBusy):
        raise
    except Exception as exc:  # noqa: BLE001 (re-raised unless it comes from the user's model)
        explained = user_model_error(spec.model, exc, "no record was written")
        if explained is None and (is_builtin_model(resolve_model(spec.model)) or out_of_memory(exc)):  # a failure
            explained = sized_or_optioned(spec, exc, traceback.extract_tb(exc.__traceback__)[-1])  # the run's sizes
        if explained is None:  # or options explain; otherwise membench's own error, which keeps its traceback
            raise
        raise explained from None


def _execute(spec: RunSpec, store: ResultsStore, device: torch.device, checkpoint_dir: Path, command: str,
             progress: bool, train_time_limit_s: float | None, wait_for_checkpoint: bool,
             train: bool) -> dict[str, Any]:
    started = time.perf_counter()
    task = make_task(spec.task)
    seed_all(spec.seed)  # initial weights depend on the run's seed, not on earlier runs in this process
    model = build_model(spec, task).to(device)
    declared = check_declared(model, task.spec, spec.budget, spec.model,
                              swept=isinstance(SUITES.get(spec.suite), SweepSuite))
    contract = audit(model, task, spec, declared, device)
    training: dict[str, Any] | None = None
    if model.trainable:
        train_config = model.preset.train
        key = checkpoint_key(spec, model, task)
        limit = None if train_time_limit_s is None else max(0.0, train_time_limit_s - (time.perf_counter() - started))
        path = checkpoint_path(key, checkpoint_dir, model)
        if train and device.type == "cpu" and spec.preset in ("gpu", "paper") and is_builtin_model(type(model)) \
                and (not path.exists() or trained_steps(path) < train_config.steps):
            warn(f"training {spec.model}'s {spec.preset} preset on a CPU ({train_config.steps} updates of "
                 f"{train_config.batch_size} episodes): this preset is sized for a GPU and can take hours here (the "
                 "README's 'How much compute each gpu preset needs'); --train-time-limit bounds it, and a rerun "
                 "resumes")
        result = (meta_train(model, task, train_config, path, device, spec.seed, progress, time_limit_s=limit,
                             wait=wait_for_checkpoint)  # the limit counts building and the audit
                  if train else as_trained(model, path, train_config, spec, wait=wait_for_checkpoint))
        curve_path = store.training_dir / f"{key}.csv"  # a paused run's curve too (a session packs it)
        import pandas as pd

        rows = pd.DataFrame(result.curve) if result.curve else pd.DataFrame(columns=["step", "loss", "error"])
        write_text_atomic(curve_path, rows.to_csv(index=False))  # (paused before its first logged step: a header)
        if train and not result.finished:
            raise TrainingPaused(
                f"meta-training of '{spec.model}' (preset {spec.preset}) stopped at step {result.steps} of "
                f"{train_config.steps} at the command's training time limit; its checkpoint is "
                f"{result.checkpoint}. Rerun the same command to continue; finished runs are kept.")
        training = {"checkpoint_key": key, "steps": result.steps, "finished": result.finished,  # False: paused
                    "weights_digest": weights_digest(model.state_dict()),  # the weights evaluated (as shipped)
                    "train_time_s": round(result.train_time_s, 2),
                    "trained_by_this_run": {"steps": result.trained_now[0],  # 0: its checkpoint was trained already
                                            "train_time_s": round(result.trained_now[1], 2)},
                    "config": dataclasses.asdict(train_config), "curve": str(curve_path.relative_to(store.root)),
                    "history": result.history}
        contract = audit(model, task, spec, declared, device)  # the trained model's writes are isolated too
    eval_started = time.perf_counter()
    errors = evaluate(model, task, spec, device, contract)
    train_split = None
    if model.trainable and len(task.spec.pattern_shape) == 3:  # images: did it memorise its training images?
        seen = evaluate(model, task, spec, device, contract, split="train",
                        queries=TRAIN_SPLIT_EPISODES * task.spec.num_patterns)
        batches = np.asarray(seen).reshape(-1, task.spec.num_patterns).mean(axis=1)
        train_split = {"num_queries": len(seen), "batch_errors": batches.round(4).tolist()}
    record = {
        "run_id": spec.run_id,
        **dataclasses.asdict(spec),
        "task_unit": task.error_unit,
        "model_config": plain_config(model.config(), spec.model),
        "preset_config": model.preset.to_dict() if model.preset is not None else None,
        "memory_floats": contract.floats,  # declared, measured on the probe and on every evaluated batch
        "num_queries": len(errors),
        "mean_error": float(np.mean(errors)),
        "errors": errors,
        "training": training,
        "train_split": train_split,  # trained image models: per-batch errors on training-split episodes
        "eval_time_s": round(time.perf_counter() - eval_started, 3),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "command": command,
        "environment": environment(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    source = model_source_digest(type(model))
    if source is not None:  # a model from outside membench (built-in ones: the environment's git commit)
        record["model_source"] = source
    store.save(record)
    return record


def say_done(count: int, total: int, record: dict[str, Any]) -> None:
    """The line on stderr for a finished run when no progress bars are shown: `count` runs of at most `total`.

    It names the statistic its table reports: Table 1's mean error per query, Figure 3's median over batches
    (images; `membench.figure3.summarise`), with the mean beside it."""
    error = f"mean error {record['mean_error']:.4g} {record['task_unit']}"
    if isinstance(SUITES.get(record["suite"]), SweepSuite):  # a Figure 3 point (capacity tables report the mean)
        from membench.report import episode_means  # (pandas and scipy: only when there is such a line)

        error = (f"median batch error {np.median(episode_means(record)):.4g} {record['task_unit']} "
                 f"(mean {record['mean_error']:.4g})")
    print(f"run {count} of at most {total} done: {record['run_id']}, {error}, {record['wall_time_s']:.1f} s",
          file=sys.stderr, flush=True)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, modification time in ns, size) of the file at `path`, None where there is none: a record replaced
    by another process (written anew and renamed over) no longer has its stamp, whatever the hosts' clocks say."""
    try:
        found = path.stat()
    except OSError:  # none there, or its folder a file (named when a record is written there)
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def run_all(specs: list[RunSpec], out_dir: Path, device: str = "auto", force: bool = False,
            checkpoint_dir: Path | None = None, command: str | None = None, progress: bool = True,
            on_record: Callable[[dict[str, Any]], None] | None = None,
            train_time_limit_s: float | None = None, launcher: str = "local",
            address: str | None = None, train: bool = True) -> list[dict[str, Any]]:
    """Execute every spec not already finished in `out_dir` (all of them with `force`); return the new records.

    Runs claimed by another process on the same directory are left to it until the end, then
    waited for (and computed here only if that process did not finish them); so are runs whose
    checkpoint another process is training, so several processes given the same command share its
    models out. Meta-training in this call stops `train_time_limit_s` seconds after the call began
    (TrainingPaused). `launcher="ray"` runs them as Ray tasks instead (membench.ray_launcher; `address`
    of an existing cluster, else Ray's default; the limit bounds the call there too). With `train` off,
    learned models are evaluated from their checkpoints as they stand (`execute`); a record of a paused
    checkpoint counts as finished then, and otherwise its run trains on (`is_current`).
    """
    if not train and train_time_limit_s is not None:
        raise MembenchError("--no-train and --train-time-limit contradict each other (one trains for a time, the "
                            "other not at all); give one of them")
    deadline = None if train_time_limit_s is None else time.perf_counter() + train_time_limit_s
    torch_device = resolve_device(device) if launcher != "ray" else None  # Ray's workers: on their nodes
    store = ResultsStore(out_dir)
    cache = ("--checkpoint-dir", "give another") if checkpoint_dir else (
        "the checkpoint cache", "set $MEMBENCH_CACHE to another folder (it holds checkpoints/), or give "
                                "--checkpoint-dir")
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir())
    command = command or shlex.join(["membench", *sys.argv[1:]])
    git_state()  # before any file is written
    specs = checked_specs(specs)
    writable_folder(out_dir, "--out")
    found = {spec.run_id: _stamp(store.record_path(spec.run_id)) for spec in specs}  # the records as this call began
    if launcher == "ray":
        if any(resolve_model(spec.model).trainable for spec in specs):
            writable_folder(checkpoint_dir, *cache)
        from membench.ray_launcher import run_with_ray

        return run_with_ray(specs, Path(out_dir), device, force, checkpoint_dir, command, progress,
                            train_time_limit_s, address, train, on_record)
    if launcher != "local":
        raise MembenchError(f"unknown launcher '{launcher}'. Valid launchers: local, ray")
    todo = pending(specs, store, force, train, checkpoint_dir)
    if any(resolve_model(spec.model).trainable for spec in todo):
        writable_folder(checkpoint_dir, *cache)
    if not train:  # every run to be made has its checkpoint, or none is made
        require_checkpoints(todo, checkpoint_dir)
    records: list[dict[str, Any]] = []
    deferred: list[RunSpec] = []

    def run_one(spec: RunSpec, wait: bool = True) -> None:
        limit = None if deadline is None else max(0.0, deadline - time.perf_counter())
        record = execute(spec, store, torch_device, checkpoint_dir, command, progress, limit, wait, train)
        records.append(record)
        if not progress:  # no bars (e.g. into a log file): a line a run, so a long command shows it is alive
            say_done(len(records), len(todo), record)
        if on_record:
            on_record(record)

    iterator = todo
    if progress and todo:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="runs", unit="run")

    def redone(spec: RunSpec) -> bool:  # its record was written by another process since this call began
        now = _stamp(store.record_path(spec.run_id))
        return now is not None and now != found[spec.run_id]

    for spec in iterator:
        if progress and hasattr(iterator, "set_postfix_str"):
            iterator.set_postfix_str(f"{spec.model} N={spec.task['num_patterns']} seed={spec.seed}")
        with store.claim(spec.run_id) as mine:
            if not mine:
                deferred.append(spec)
            elif not redone(spec):
                try:
                    run_one(spec, wait=False)
                except CheckpointBusy:
                    deferred.append(spec)
    for spec in deferred:
        with store.claim(spec.run_id, blocking=True):
            if (force and not redone(spec)) or not is_current(spec, store, train, checkpoint_dir):
                run_one(spec)
    return records
