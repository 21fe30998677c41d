"""The one meta-training loop shared by every learned model (EBMM and learned baselines).

Conventions, so that learned models are trained alike:
- fresh episodes every step from the task's *train* split, drawn from a CPU generator
  seeded by the run seed (evaluation uses another stream, so its episodes are unseen);
- AdamW with global-norm gradient clipping (the paper's recipe, App. D);
- a checkpoint (model, optimiser, generator state, curve) written atomically every
  `checkpoint_every` steps and at the end; a killed run resumes from the last one, and a
  finished checkpoint is reused as is (the runner keys checkpoints by config);
- a non-finite loss or gradient stops training with `TrainingDiverged`;
- with `time_limit_s`, training checkpoints and returns unfinished once that much wall
  time has passed in this call (`TrainResult.finished` is False): long presets then run
  as a series of bounded commands, each resuming where the last one stopped.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TypeVar

import torch

from membench.errors import MembenchError, TrainingDiverged
from membench.interface import AssociativeMemory
from membench.tasks import Task

TRAIN_STREAM = 7919  # offset of the training generator's seed from the run seed
PresetEntry = TypeVar("PresetEntry")


def pick_preset(presets: Mapping[str, PresetEntry], preset: str, model: str) -> PresetEntry:
    """`presets[preset]`, or a MembenchError naming the model's valid presets."""
    if preset not in presets:
        raise MembenchError(f"model '{model}' has no preset '{preset}'. Its presets: {', '.join(presets)}")
    return presets[preset]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000                 # optimiser updates
    batch_size: int = 16              # episodes per update
    lr: float = 5e-5                  # AdamW learning rate (paper: 5e-5)
    weight_decay: float = 1e-6        # AdamW weight decay (paper: 1e-6)
    clip_norm: float = 0.05           # global gradient-norm clip (paper: 0.05)
    cosine_decay: bool = False        # decay lr along a half cosine to 0 at `steps` (paper: constant)
    log_every: int = 25               # steps between curve rows
    checkpoint_every: int = 100       # steps between checkpoints
    num_patterns: tuple[int, ...] | None = None  # train on N drawn from this set each step
    #   (one checkpoint then serves every N); None: train on the run's N only


@dataclass
class TrainResult:
    steps: int
    train_time_s: float
    curve: list[dict[str, float]]     # rows: step, loss, error, elapsed_s
    checkpoint: str
    finished: bool = True             # False: stopped at the time limit before config.steps


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def meta_train(
    model: AssociativeMemory,
    task: Task,
    config: TrainConfig,
    checkpoint_path: Path,
    device: torch.device,
    seed: int,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train `model` in place on episodes of `task`; resume from / write `checkpoint_path`.

    Stops early (checkpointed, `finished=False`) once `time_limit_s` seconds have passed.
    """
    call_started = time.perf_counter()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed + TRAIN_STREAM)
    step, elapsed, curve = 0, 0.0, []
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu())  # map_location moved it; generators live on the CPU
        step, elapsed, curve = saved["step"], saved["elapsed_s"], saved["curve"]

    def checkpoint() -> None:
        _save_atomic(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
             "step": step, "elapsed_s": elapsed, "curve": curve, "config": dataclasses.asdict(config)},
            checkpoint_path,
        )

    bar = None
    if progress and step < config.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=f"train {type(model).__name__}", leave=False)
    model.train()
    while step < config.steps:
        started = time.perf_counter()
        if config.cosine_decay:  # a function of the step alone, so a resumed run continues the schedule
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        step_task = task
        if config.num_patterns:
            choice = torch.randint(len(config.num_patterns), (1,), generator=generator).item()
            step_task = task.with_num_patterns(config.num_patterns[choice])
        episodes = step_task.sample(config.batch_size, generator, split="train").to(device)
        loss, retrievals = model.meta_loss(episodes.patterns, episodes.queries)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"meta-training of {type(model).__name__} diverged at step {step + 1}: loss={loss.item()}, "
                f"gradient norm={grad_norm.item()}. Lower the learning rate (lr={config.lr}) or the clip norm "
                f"(clip_norm={config.clip_norm}); the last good checkpoint is kept at {checkpoint_path}."
            )
        optimizer.step()
        step += 1
        elapsed += time.perf_counter() - started
        if step % config.log_every == 0 or step == config.steps:
            error = step_task.errors(retrievals.detach(), episodes.patterns).mean().item()
            curve.append({"step": step, "loss": loss.item(), "error": error,
                          "num_patterns": step_task.spec.num_patterns, "elapsed_s": elapsed})
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", error=f"{error:.2f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()
        if bar is not None:
            bar.update(1)
        if time_limit_s is not None and time.perf_counter() - call_started > time_limit_s and step < config.steps:
            checkpoint()
            break
    if bar is not None:
        bar.close()
    if not checkpoint_path.exists():
        checkpoint()
    model.eval()
    return TrainResult(steps=step, train_time_s=elapsed, curve=curve, checkpoint=str(checkpoint_path),
                       finished=step >= config.steps)
