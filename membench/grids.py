"""Reconstruction grids of Figure 3's runs: query, retrieval and original, like the paper's Fig. 2; one per
line of the figure (`select_grids`, `grid_name`).

A grid needs the model itself, so it is redrawn rather than stored: the run's model is rebuilt and
loaded by the runner's own path (`membench.build.load_trained`; a grid is skipped, with a note,
when the trained checkpoint is not on this machine or is not the one the record evaluated), and it
reads the first evaluation episode of the run's own seed.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from membench.budget import check_measured, sealed
from membench.checkpoints import trained_steps, weights_digest
from membench.errors import DataMismatch, DatasetMissing, MembenchError
from membench.integrity import checked_retrievals
from membench.plots import pyplot, save
from membench.sweeps import TASK_TAGS, line_label, record_curve

Shown = tuple[Any, torch.Tensor, torch.Tensor]  # (episodes, retrievals, errors) of a run's first test episode


def select_grids(records: list[dict[str, Any]], checkpoint_dir: Path, out_dir: Path
                 ) -> tuple[dict[Path, tuple[dict[str, Any], Shown]], list[Path]]:
    """The grid of each line of Figure 3 (`grid_name`), from its largest-memory run: ({path: (record, its first
    episode)}, the paths of grids that cannot be drawn here, their reasons printed). DatasetMissing or
    MembenchError, naming `--no-grids`, when the images the runs were defined on are not here."""
    largest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r["memory_floats"], -r["seed"])):
        largest[(record["task"]["kind"], grid_name(record, records))] = record
    shown: dict[Path, tuple[dict[str, Any], Shown]] = {}
    skipped: list[Path] = []
    for (dataset, name), record in sorted(largest.items()):
        try:
            episode = first_episode(record, checkpoint_dir)
        except DatasetMissing as exc:  # only the grids need the images
            raise DatasetMissing(f"{exc} The figure itself needs no images: `--no-grids` draws it without "
                                 "its reconstruction grids.") from None
        except DataMismatch as exc:
            raise MembenchError(f"the reconstruction grids need the images the runs were defined on: {exc.what}; "
                                "point --data-dir at them, or `--no-grids` draws the figure without its grids"
                                ) from None
        if episode is not None:
            shown[out_dir / f"fig3_recon_{dataset}_{name}.png"] = (record, episode)
        else:  # its file, if any, is kept
            skipped.append(out_dir / f"fig3_recon_{dataset}_{name}.png")
    return shown, skipped


def grid_name(record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """A reconstruction grid's name: its curve's line label, the preset where the trained runs' differ, and the
    task (data, image size, block, N) where the data set's runs differ in it: one grid per line of the figure."""
    kind = record["task"]["kind"]
    same = [r for r in records if r["task"]["kind"] == kind]
    trained_presets = {r["preset"] for r in same if r["training"]}
    parts = [line_label(*record_curve(record))]
    if record["training"] and len(trained_presets) > 1:
        parts.append(record["preset"])
    for column, text in {**TASK_TAGS, "num_patterns": "N={}"}.items():
        if len({r["task"].get(column, "") for r in same}) > 1:
            parts.append(text.format(record["task"].get(column, "") or "bundled"))
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", " ".join(parts)).strip("_")


def first_episode(record: dict[str, Any], checkpoint_dir: Path) -> Shown | None:
    """The first test episode a run evaluated, as `runner.evaluate` drew it: (episodes (1 episode), its
    retrievals (1, N, C, H, W) in [0, 1], their errors (N,)); None (after printing why) when a trained
    model's checkpoint is absent, a model from outside membench has changed since its record was made, or
    the episode's errors are not those its record holds (the grid would not show the model evaluated).
    MembenchError naming the line when such a model fails."""
    from membench.registry import errors_of_user_model, model_source_digest, resolve_model
    from membench.run_spec import RunSpec

    spec = RunSpec(**{name: record[name] for name in RunSpec.__dataclass_fields__})
    source = model_source_digest(resolve_model(spec.model))
    if source is not None and record.get("model_source") != source:
        print(f"skipped the grid of {record['run_id']}: the source of {spec.model} has changed since its record was "
              "made (rerun its `membench run` command to evaluate today's code)")
        return None
    with errors_of_user_model(spec.model, "no figure was written; mend it, or give --no-grids"):
        return _first_episode(record, spec, checkpoint_dir)


def _first_episode(record: dict[str, Any], spec: Any, checkpoint_dir: Path) -> Shown | None:
    """`first_episode` of the run `spec`, its model as today's code builds it."""
    from membench.build import load_trained
    from membench.runner import EVAL_EPISODES_PER_BATCH, EVAL_STREAM
    from membench.tasks import seed_all

    task, model, checkpoint = load_trained(spec, checkpoint_dir, preset_config=record.get("preset_config"))
    if model.trainable and checkpoint is None:
        print(f"skipped the grid of {record['run_id']}: its trained checkpoint is not in {checkpoint_dir} "
              "(give `membench figures --checkpoint-dir` the folder its run trained into, or rerun its "
              "`membench run` command to train it there)")
        return None
    training = record["training"] or {}
    stands = trained_steps(checkpoint) if model.trainable else None
    if model.trainable and (stands != training["steps"] or training.get("weights_digest")
                            not in (None, weights_digest(model.state_dict()))):
        print(f"skipped the grid of {record['run_id']}: its checkpoint is not the one its record evaluated (now at "
              f"step {stands:g}, the record's at step {training['steps']}, or other weights); "
              "rerun its `membench run` command, with --no-train for a paused one, to evaluate it as it stands")
        return None
    seed_all(spec.seed)
    first_batch = min(EVAL_EPISODES_PER_BATCH, math.ceil(spec.queries / task.spec.num_patterns))
    episodes = task.sample(first_batch, torch.Generator().manual_seed(spec.seed + EVAL_STREAM), split="test")
    # episodes are written independently, but a batch of one can round differently (the conv energy's
    # vmapped convolutions take another path at B = 1): write two, as evaluate writes its batches
    episodes = type(episodes)(episodes.patterns[:2], episodes.queries[:2])
    with torch.no_grad():
        state = model.write(episodes.patterns.clone())
        check_measured(state, 2, record["memory_floats"], spec.budget, spec.model)  # what its record measured
        retrievals = checked_retrievals(model.read(sealed(state), episodes.queries.clone()), episodes.queries,
                                        spec.model)[:1]
    episodes = type(episodes)(episodes.patterns[:1], episodes.queries[:1])
    errors = task.errors(retrievals, episodes.patterns)[0]  # as evaluated
    evaluated = torch.as_tensor(record["errors"][:task.spec.num_patterns], dtype=errors.dtype)
    slack = 1.0 if record["task"]["kind"] == "omniglot" else 1e-3  # wrong pixels: one at 0.5 may round either way
    if evaluated.shape != errors.shape or not torch.allclose(errors, evaluated, rtol=1e-3, atol=slack):
        print(f"skipped the grid of {record['run_id']}: its first episode's errors differ from its record's (another "
              "checkpoint at the same step, or code that reads differently since); rerun its `membench run` command "
              "with --force to evaluate it as it stands")
        return None
    return episodes, retrievals.clamp(0, 1), errors


def reconstruction_grid(record: dict[str, Any], path: Path, shown: Shown,
                        label: str, columns: int = 8) -> Path:
    """Rows: query, retrieval, original for `columns` queries spread evenly over the run's first test episode,
    `shown` (`first_episode`), first and last included, each titled with its place in the episode (a memory that
    keeps the first images it is given shows what it does with the others too); `label` (the curve's) opens the
    figure's title, with the memory and the error's unit; each retrieval's error is written in its corner. Returns
    the written path."""
    episodes, retrievals, errors = shown
    plt = pyplot()
    count = record["task"]["num_patterns"]
    picked = torch.linspace(0, count - 1, min(columns, count)).round().long().unique().tolist()
    fig, axes = plt.subplots(3, len(picked), figsize=(1.2 * len(picked), 3.9), squeeze=False)
    for row, (name, images) in enumerate((("query", episodes.queries), ("retrieval", retrievals),
                                          ("original", episodes.patterns))):
        for col, query in enumerate(picked):
            image = images[0, query].permute(1, 2, 0).numpy()
            axes[row, col].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray_r" if
                                  image.shape[-1] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
            axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(f"#{query + 1} of {count}", fontsize=7)
            if row == 1:  # inside the retrieval it belongs to
                axes[row, col].text(0.03, 0.03, f"{errors[query]:.1f}", transform=axes[row, col].transAxes,
                                    fontsize=6.5, color="firebrick", va="bottom",
                                    bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "linewidth": 0})
        axes[row, 0].set_ylabel(name, fontsize=8)
    preset = f" ({record['preset']})" if record.get("training") else ""
    memory = f"{record['memory_floats'] / 1000:.2f}k floats" if record["memory_floats"] else "no memory"
    scored = (" (counted after thresholding at 0.5; retrievals shown as read)" if record["task"]["kind"] == "omniglot"
              else "")
    fig.suptitle(f"{label}{preset} on {record['task']['kind']}, {memory}\nin red: each retrieval's error, "
                 f"{record.get('task_unit', 'error')}{scored}", fontsize=8.5)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path
