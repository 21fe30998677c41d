"""The one meta-training loop shared by every learned model (EBMM and learned baselines).

Conventions, so that learned models are trained alike:
- fresh episodes every step from the task's *train* split, drawn from a CPU generator
  seeded by the run seed (evaluation uses another stream, so its episodes are unseen);
- a fresh model's `initialise` (data-dependent initialisation, if the model has one) sees at least
  INIT_PATTERNS train-split patterns from a stream of their own, once: never on resume; a model's
  `after_update` (statistics outside the meta-gradient) sees every update's stored patterns;
- AdamW with global-norm gradient clipping (the paper's recipe, App. D);
- a checkpoint (model, optimiser, generator states, curve, history) written atomically every
  `checkpoint_every` steps and at the end; a killed run resumes from the last one, and a
  finished checkpoint is reused as is (`run_identity.checkpoint_key` keys checkpoints by config).
  What is shipped or carried between machines is `checkpoints.portable`: weights only once
  finished, and with the optimiser state while unfinished (up to RESUME_STATE_MAX_MB there); a
  weights-only one resumes with a fresh optimiser state;
- the history lists each stretch of training (steps, device, time, matmul precision, commit,
  whether AdamW's state was resumed or fresh, on CUDA the peak GPU memory while it trained), so a checkpoint
  trained across machines says which devices trained it and where its optimiser restarted;
- one update is `membench.stepper.Stepper.step` (eager, or replayed from a CUDA graph);
  the loop waits for the device only when it logs, checkpoints or stops, and on CUDA the
  next batch is drawn on a worker thread meanwhile, into pinned memory, and copied without
  waiting (`EpisodeStream`: the same batches);
- a non-finite loss or gradient stops training with `TrainingDiverged` (at the next log or
  checkpoint, before anything is saved), and so does a collapse: once COLLAPSE_LOGS logged updates in a row erred
  LEARNED_SHARE of what the queries returned unchanged err or less on average, COLLAPSE_LOGS in a row each erring
  COLLAPSED_SHARE of it or more (a model gone back to chance burns its time without a NaN); an unreadable
  checkpoint is set aside (`<name>.corrupt`) and training starts afresh;
- one process at a time trains a checkpoint (a lock beside it): another waits, then
  resumes or reuses the work; Ctrl-C or SIGTERM finishes the step, checkpoints, then stops;
- with `time_limit_s`, training checkpoints and returns unfinished once that much wall
  time has passed in this call (`TrainResult.finished` is False): long presets then run
  as a series of bounded commands, each resuming where the last one stopped.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from membench.checkpoints import load_checkpoint, save_checkpoint
from membench.episode_stream import EpisodeStream
from membench.errors import CheckpointBusy, TrainingDiverged, TrainingInterrupted
from membench.interface import AssociativeMemory, TrainConfig
from membench.provenance import device_name, git_state, peak_memory_gb, reset_peak_memory
from membench.signals import routed
from membench.stepper import Stepper
from membench.store import file_lock, remove_orphans, warn
from membench.tasks import Task, global_generators, set_global_generators

TRAIN_STREAM = 7919  # offset of the training generator's seed from the run seed
INIT_STREAM = 6007  # offset of the seed of the batch a fresh model's `initialise` sees
INIT_PATTERNS = 512  # patterns of that batch, at least (whole episodes)
COLLAPSE_LOGS = 10  # logged updates in a row each at COLLAPSED_SHARE of the queries' own error or more: collapsed,
LEARNED_SHARE = 0.5  # once as many in a row erred at most this share of it on average (the model had learned)
COLLAPSED_SHARE = 0.75  # (every collapsed binary curve committed, none of the others: results/diagnostics/collapse)
DRAW_AHEAD_ON = ("cuda",)  # device types whose training draws the next batch while an update runs (EpisodeStream)


@dataclass
class TrainResult:
    steps: int
    train_time_s: float
    curve: list[dict[str, float]]     # rows: step, loss, error, num_patterns, elapsed_s
    checkpoint: str
    finished: bool = True             # False: stopped at the time limit before config.steps
    trained_now: tuple[int, float] = (0, 0.0)  # the updates and seconds of them this call made (0: it was done)
    history: list[dict[str, Any]] | None = None  # stretches of training; None: an older checkpoint without one


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[list[bool]]:
    """While inside, a first Ctrl-C or SIGTERM (`kill`, a scheduler's stop) only sets the yielded flag (checked
    between steps); a second one interrupts at once, and one that training's last look at the flag missed
    raises TrainingInterrupted on leaving (training's result is checkpointed by then). Off the main thread
    (where signals cannot be caught) the flag never rises."""
    flag = [False]

    def handler(signum, frame):
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    with routed(handler):
        yield flag
    if flag[0]:
        raise TrainingInterrupted("interrupted as meta-training ended, its checkpoint written; rerun the same command "
                                  "to continue")


class CollapseGuard:
    """Whether a model that had learned went back to chance, from its logged updates' errors (`seen`)."""

    def __init__(self):
        self.learned = False  # COLLAPSE_LOGS logged updates in a row erred LEARNED_SHARE of the queries' own or less
        self.shares: collections.deque[float] = collections.deque(maxlen=COLLAPSE_LOGS)

    def seen(self, error: float, unchanged: float) -> bool:
        """Add a logged update's error and what its queries returned unchanged err; True once collapsed."""
        self.shares.append(error / unchanged if unchanged > 0 else math.nan)
        full = len(self.shares) == COLLAPSE_LOGS
        self.learned = self.learned or (full and sum(self.shares) <= LEARNED_SHARE * COLLAPSE_LOGS)
        return self.learned and full and all(share >= COLLAPSED_SHARE for share in self.shares)  # NaN: never


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of update `step` (0-based): `config.lr`, times (step + 1) / warmup_steps during the
    warmup, times the half cosine 0.5 (1 + cos(pi step / steps)) with `cosine_decay`."""
    lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps)) if config.cosine_decay else config.lr
    # the cosine's rate first: without a warmup, the same float as the cosine schedule alone
    return lr * (step + 1) / config.warmup_steps if step < config.warmup_steps else lr


def meta_train(
    model: AssociativeMemory,
    task: Task,
    config: TrainConfig,
    checkpoint_path: Path,
    device: torch.device,
    seed: int,
    progress: bool = True,
    time_limit_s: float | None = None,
    wait: bool = True,
) -> TrainResult:
    """Train `model` in place on episodes of `task`; resume from / write `checkpoint_path`.

    Stops early (checkpointed, `finished=False`) once `time_limit_s` seconds have passed since this
    call began (waiting included); a fresh model makes at least one step, a resumed one none when the
    time is already up. Only one process trains a checkpoint at a time: another one waits, then resumes
    or reuses its work, or with `wait=False` raises CheckpointBusy at once. A Ctrl-C or SIGTERM finishes the
    current step, checkpoints and raises TrainingInterrupted.
    """
    deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    checkpoint_path = Path(checkpoint_path)
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(checkpoint_path.parent)
    lock = checkpoint_path.with_name(checkpoint_path.name + ".lock")
    with contextlib.ExitStack() as held:
        if not held.enter_context(file_lock(lock, blocking=False)):  # a lock got here is kept: no race
            if not wait:
                raise CheckpointBusy(checkpoint_path.name)
            warn(f"another process is training {checkpoint_path.name}; waiting for it to finish or pause")
            held.enter_context(file_lock(lock))
        interrupted = held.enter_context(_deferred_interrupt())
        return _train(model, task, config, checkpoint_path, device, seed, progress, deadline, interrupted)


def _train(model: AssociativeMemory, task: Task, config: TrainConfig, checkpoint_path: Path, device: torch.device,
           seed: int, progress: bool, deadline: float | None, interrupted: list[bool]) -> TrainResult:
    model.to(device)
    reset_peak_memory(device)  # the stretch's peak_memory_gb: this training's, not an earlier one's in the process
    stepper = Stepper(model, config, device)
    generator = torch.Generator().manual_seed(seed + TRAIN_STREAM)
    step, elapsed, curve, history = 0, 0.0, [], []
    guard = CollapseGuard()
    saved = load_checkpoint(checkpoint_path, model, stepper.optimizer)
    if saved is not None:
        stepper.after_load()
        generator.set_state(saved["generator"])
        step, elapsed, curve = saved["step"], saved["elapsed_s"], saved["curve"]
        history = saved.get("history")  # None: written before checkpoints kept a history
        guard.learned = saved.get("learned", False)
        guard.shares.extend(saved.get("guard_shares", []))  # the window goes on across a pause
        if "global_generators" in saved:  # (not in checkpoints written before they were saved)
            set_global_generators(saved["global_generators"], device)
        if "optimizer" not in saved and step < config.steps:
            warn(f"{checkpoint_path.name} holds weights only (a shipped checkpoint): training continues from step "
                 f"{step} with a fresh optimiser state")
    if saved is None and type(model).initialise is not AssociativeMemory.initialise:  # a fresh model: its
        # data-dependent initialisation, from a stream of its own; trained on a set of N (one checkpoint for
        # all), at the largest, so that the batch does not depend on the N evaluated
        init_task = task.with_num_patterns(max(config.num_patterns)) if config.num_patterns else task
        count = -(-INIT_PATTERNS // init_task.spec.num_patterns)
        init = init_task.sample(count, torch.Generator().manual_seed(seed + INIT_STREAM), split="train")
        model.initialise(init.patterns.to(device))
    saved_step = step if saved is not None else None
    resumed_optimizer = saved is not None and "optimizer" in saved  # else AdamW's moments start afresh
    first_step, first_elapsed = step, elapsed  # this call's stretch of training starts here

    def stretches() -> list[dict[str, Any]] | None:
        """The saved history, plus this call's stretch once it has made a step."""
        if step == first_step:
            return history
        commit, dirty = git_state()
        return [*(history or []), {
            "steps": [first_step, step], "train_time_s": round(elapsed - first_elapsed, 2), "device": device.type,
            "device_name": device_name(device), "matmul_precision": stepper.matmul_precision,
            "precision": config.precision, "compiled": stepper.compiled, "cuda_graph": stepper.graphs_on,
            "commit": commit, "dirty": dirty, "optimizer": "resumed" if resumed_optimizer else "fresh",
            "threads": torch.get_num_threads() if device.type == "cpu" else None, "torch": str(torch.__version__),
            "peak_memory_gb": peak_memory_gb(device)}]
    first_bad = torch.tensor(-1, device=device)  # first step whose loss or gradient was not finite

    def check_finite(loss: torch.Tensor | None) -> None:
        """Raise TrainingDiverged if any step so far was not finite (the one place training waits)."""
        if first_bad.item() >= 0:
            kept = (f"its last checkpoint (step {saved_step}) is kept at {checkpoint_path}" if saved_step is not None
                    else "no checkpoint was written")
            if first_bad.item() == 1:  # before any update: the initial weights or options, not the learning rate
                fix = ("the model's initial weights give it: check its options (a NaN or inf value?) and its "
                       "initialisation")
            else:
                fix = (f"lower the learning rate (now {config.lr}: --option train.lr=...) or the clip norm (now "
                       f"{config.clip_norm}: --option train.clip_norm=...)")
            raise TrainingDiverged(
                f"meta-training of {type(model).__name__} diverged at step {first_bad.item()}: the loss"
                f"{'' if loss is None else f' ({loss.item()})'} or the gradient norm was not finite. Fix: {fix}; "
                f"{kept}.")

    def checkpoint() -> None:
        nonlocal saved_step
        save_checkpoint({"model": model.state_dict(), "parameters": [name for name, _ in model.named_parameters()],
                         "optimizer": stepper.optimizer.state_dict(),
                         "generator": stream.generator_state(), "step": step, "elapsed_s": elapsed, "curve": curve,
                         "history": stretches(), "config": dataclasses.asdict(config), "learned": guard.learned,
                         "guard_shares": list(guard.shares), "global_generators": global_generators(device),
                         "key": checkpoint_path.stem},
                        checkpoint_path)
        saved_step = step

    # resumed after the time was up (e.g. waited for another process to pause): no step
    late = saved is not None and deadline is not None and time.perf_counter() > deadline
    bar = None
    if progress and step < config.steps and not late:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=f"train {type(model).__name__}", leave=False)
    stream = EpisodeStream(task, config, generator, ahead=device.type in DRAW_AHEAD_ON)
    keeps_statistics = type(model).after_update is not AssociativeMemory.after_update
    try:
        model.train()
        while step < config.steps and not late:
            started = time.perf_counter()
            if config.cosine_decay or config.warmup_steps:  # of the step alone: a resumed run continues it
                stepper.set_lr(learning_rate(config, step))
            step_task, episodes = stream.take(step)
            episodes = episodes.to(device, non_blocking=True)  # pinned when drawn ahead: the host goes on
            try:
                out = stepper.step(episodes.patterns, episodes.queries)
            except (RuntimeError, ValueError, ArithmeticError):  # e.g. a loss of NaN weights refused by the model
                check_finite(None)  # an earlier step diverged: say so, not this error
                raise
            if keeps_statistics:
                with torch.no_grad():
                    model.after_update(episodes.patterns)
            step += 1
            first_bad.masked_fill_(~out.finite & (first_bad < 0), step)
            logging = step % config.log_every == 0 or step == config.steps
            saving = step % config.checkpoint_every == 0 or step == config.steps
            paused = deadline is not None and time.perf_counter() > deadline
            stopping = interrupted[0]  # read once: a signal from here on is this step's next one
            if logging or saving or paused or stopping:
                check_finite(out.loss)
            elapsed += time.perf_counter() - started
            if logging:
                error = step_task.errors(out.retrievals, episodes.patterns).mean().item()
                curve.append({"step": step, "loss": out.loss.item(), "error": error,
                              "num_patterns": step_task.spec.num_patterns, "elapsed_s": elapsed})
                if bar is not None:
                    bar.set_postfix(loss=f"{out.loss.item():.4f}", error=f"{error:.2f}")
                unchanged = step_task.errors(episodes.queries, episodes.patterns).mean().item()
                if guard.seen(error, unchanged):
                    kept = (f"its last checkpoint (step {saved_step}) is kept at {checkpoint_path}; delete it to start "
                            "afresh" if saved_step is not None else "no checkpoint was written")
                    raise TrainingDiverged(
                        f"meta-training of {type(model).__name__} collapsed: its last {COLLAPSE_LOGS} logged updates "
                        f"(to step {step}) erred at least {COLLAPSED_SHARE:.0%} of what the queries returned unchanged "
                        f"err (now {error:.2f} against {unchanged:.2f}), after {COLLAPSE_LOGS} in a row erred at most "
                        f"{LEARNED_SHARE:.0%} of it on average. Fix: lower the learning rate (now {config.lr}: "
                        f"--option train.lr=...) or warm it up (--option train.warmup_steps=...); {kept}.")
            if saving:
                checkpoint()
            if bar is not None:
                bar.update(1)
            if stopping:
                break
            if paused and step < config.steps:
                if saved_step != step:
                    checkpoint()
                break
        if bar is not None:
            bar.close()
        if interrupted[0]:  # during a step, or before or after the loop (a finished or late checkpoint)
            check_finite(None)
            if saved_step != step:
                checkpoint()
            raise TrainingInterrupted(
                f"interrupted: meta-training of {type(model).__name__} checkpointed at step {step} of {config.steps} "
                f"({checkpoint_path}); rerun the same command to continue")
        if saved_step is None:
            checkpoint()
        model.eval()
    finally:
        stream.close()
    return TrainResult(steps=step, train_time_s=elapsed, curve=curve, checkpoint=str(checkpoint_path),
                       finished=step >= config.steps, history=stretches(),
                       trained_now=(step - first_step, elapsed - first_elapsed))
