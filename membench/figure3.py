"""Figure 3 from stored runs: distortion against rate on Omniglot and CIFAR-10, beside the paper.

Each run of a sweep suite (`fig3-omniglot`, `fig3-cifar`) is one point: a model at one
memory size, evaluated on `queries / N` random test batches (episodes) of N = 64 images.
Records hold per-query errors in episode order (N per episode), so per-batch means are
recovered here; a point is summarised by the median per-batch error and its 5th / 95th
percentiles over batches, as in the paper (App. D). The paper's points come from
results/reference/paper_fig3.csv (read off the PDF's vector graphics). Reconstruction grids,
one per curve, come from `membench.grids`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from membench.errors import MembenchError
from membench.fig3_acceptance import (MATCH_TOLERANCE, PAPER_DATASET, PAPER_POINT_TASK, acceptance_markdown,
                                      checked_presets)
from membench.grids import reconstruction_grid, select_grids
from membench.plots import legend_outside, pyplot, read_curves, save, training_curves
from membench.cells import distinct
from membench.report import REPO_ROOT, episode_means, span, updates_text
from membench.store import ResultsStore, read_table, write_text_atomic
from membench.sweeps import TASK_TAGS, line_label, record_curve

DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "paper_fig3.csv"
CITATION = ("Bartunov, Rae, Osindero & Lillicrap, 'Meta-Learning Deep Energy-Based Memory Models', "
            "arXiv:1910.02720, Figure 3")
TITLES = {"omniglot": "Omniglot (error: wrong pixels of 32x32)",
          "cifar10": "CIFAR-10 (error: squared error, values in [0, 1])"}
# What the quick presets change against the paper (ebmm.config.IMAGE_PRESETS, baselines.memory_networks)
QUICK_CHANGES = ("quick preset (a CPU smoke test, not a result): the paper's task (64 images of 32x32 per batch, 16x16 block) with narrower "
                 "networks and short CPU training: encoders 16/32/32 channels (paper 32/64/96); EBMM-FC hidden 128 "
                 "(paper 512), readout 256 (1024), 2 hops (3), 1 write step, no gradient-norm term, 300 steps of 2 "
                 "episodes; EBMM-conv width 64 (128), bottleneck 32 (memory 578 d; paper 1154 d), hidden 32 (128), "
                 "readout 256, 2 hops; MemNet and MANN 1600 steps of 2 episodes")


def image_records(out_dir: Path) -> list[dict[str, Any]]:
    """Finished runs in `out_dir` of Figure 3's suites (fig3-*), one per (point, seed) (cells.distinct); the
    image capacity suites' runs, even of the same block-corrupted task, are theirs."""
    from membench.suites import SUITES
    from membench.sweeps import SweepSuite

    return distinct([r for r in ResultsStore(out_dir).records()
                     if isinstance(SUITES.get(r["suite"]), SweepSuite) and r["task"]["kind"] in PAPER_DATASET])[0]


def _task_tags(point, frame: pd.DataFrame) -> list[str]:
    """Tags naming the task of a point (a row of `frame`) where the points of `frame` differ in it."""
    return [text.format(getattr(point, column) or "bundled") for column, text in TASK_TAGS.items()
            if frame[column].nunique() > 1]


def load_reference(path: Path | None = DEFAULT_REFERENCE) -> pd.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    fix = "omit --reference for the shipped results/reference/paper_fig3.csv (restore it from git if broken)"
    table = read_table(path, "a table of the paper's Figure 3", ("dataset", "model", "memory_k", "error", "lo", "hi"),
                       fix, comment="#")
    numbers = table[["memory_k", "error", "lo", "hi"]]
    valid = (all(map(pd.api.types.is_numeric_dtype, numbers.dtypes))
             and table["dataset"].isin(["omniglot", "cifar"]).all())
    if valid:
        ordered = (numbers["lo"] <= numbers["error"]) & (numbers["error"] <= numbers["hi"]) & (numbers["lo"] >= 0)
        valid = np.isfinite(numbers.to_numpy(float)).all() and (numbers["memory_k"] > 0).all() and ordered.all()
    if not valid:
        raise MembenchError(f"{path} is not a table of the paper's Figure 3 (dataset omniglot or cifar; memory_k > 0; "
                            f"finite 0 <= lo <= error <= hi on every row); {fix}")
    return table


def _train_config(record: dict[str, Any]) -> str:
    """What a trained record's preset resolved to as run identity compares it (`comparable_preset`), but for the
    options its curve's points set (the memory size): the same for every point of one curve trained under one
    version of its preset ('' when untrained; 'unknown' for a record made before presets were stored)."""
    from membench.run_identity import comparable_preset

    if not record["training"]:
        return ""
    if not record.get("preset_config"):
        return "unknown"
    resolved = comparable_preset(record["preset_config"])
    model = {k: v for k, v in resolved["model"].items() if k not in record["options"]}
    return json.dumps({**resolved, "model": model}, sort_keys=True)


def summarise(records: list[dict[str, Any]], reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per point (data set, curve, memory size, N, preset): pooled over seeds."""
    rows = []
    for record in records:
        curve, variant = record_curve(record)
        rows.append({"dataset": record["task"]["kind"], "curve": curve, "variant": variant, "model": record["model"],
                     "options": json.dumps(record["options"], sort_keys=True), "memory_floats": record["memory_floats"],
                     "num_patterns": record["task"]["num_patterns"], "preset": record["preset"],
                     "image_size": record["task"]["image_size"], "block": record["task"]["block"],
                     "data": record["task"].get("data", ""), "budget": record["budget"],
                     "seed": record["seed"], "batch_errors": episode_means(record),
                     "train_batches": np.asarray((record.get("train_split") or {}).get("batch_errors", []), float),
                     "trained": bool(record["training"]), "train_config": _train_config(record),
                     "paused": updates_text(record["training"]) if (record["training"] or {}).get("finished") is False
                     else "",  # evaluated from a paused checkpoint (--no-train): 'done of planned × episodes'
                     "train_time_s": (record["training"] or {}).get("train_time_s", 0.0),
                     "wall_time_s": record["wall_time_s"], "device": record["environment"]["device"],
                     "command": record["command"]})
    if not rows:
        return pd.DataFrame()
    keys = ["dataset", "curve", "variant", "model", "options", "memory_floats", "num_patterns", "preset", "image_size",
            "block", "data", "budget"]
    summary = []
    for key, group in pd.DataFrame(rows).groupby(keys, sort=False):
        batches = np.concatenate(list(group["batch_errors"]))
        p5, median, p95 = np.percentile(batches, [5, 50, 95])
        seen = np.concatenate(list(group["train_batches"]))
        point = dict(zip(keys, key))
        summary.append({**point, "memory_k": point["memory_floats"] / 1000, "median": median, "p5": p5, "p95": p95,
                        "train_median": float(np.median(seen)) if seen.size else np.nan,
                        "mean": batches.mean(), "batches": len(batches),
                        "seeds": " ".join(str(s) for s in sorted(group["seed"])),
                        "trained": bool(group["trained"].any()),
                        "train_config": " | ".join(sorted(set(group["train_config"]))),
                        "paused": ", ".join(sorted(set(group["paused"]) - {""})),
                        "train_time_s": float(group["train_time_s"].sum()), "wall_time_s": float(group["wall_time_s"].sum()),
                        "device": " ".join(sorted(set(group["device"]))), "command": " | ".join(sorted(set(group["command"])))})
    frame = pd.DataFrame(summary).sort_values(["dataset", "curve", "variant", "preset", "num_patterns", "memory_floats"],
                                              kind="stable").reset_index(drop=True)
    return _attach_paper(frame, reference)


def _attach_paper(frame: pd.DataFrame, reference: pd.DataFrame | None) -> pd.DataFrame:
    """Add the paper's point of the same curve at (within 5%) the same memory size, if any, to the points of the
    paper's task (PAPER_POINT_TASK: 64 images of 32x32 an episode, a 16x16 block)."""
    paper = {"paper": [], "paper_lo": [], "paper_hi": []}
    for _, row in frame.iterrows():
        match = None
        if reference is not None and all(row[name] == value for name, value in PAPER_POINT_TASK.items()):
            same = reference[(reference.dataset == PAPER_DATASET[row["dataset"]]) & (reference.model == row["curve"])]
            if len(same):
                nearest = same.iloc[(same.memory_k - row["memory_k"]).abs().argmin()]
                if abs(nearest.memory_k - row["memory_k"]) <= MATCH_TOLERANCE * row["memory_k"]:
                    match = nearest
        for column, source in (("paper", "error"), ("paper_lo", "lo"), ("paper_hi", "hi")):
            paper[column].append(match[source] if match is not None else np.nan)
    return frame.assign(**paper)


def _smoke_test(summary: pd.DataFrame) -> bool:
    """Whether a point of a built-in model (by where its class's file lives, as everywhere) was trained with its
    quick preset (untrained references have no preset that matters; a model of yours names its own presets,
    which QUICK_CHANGES does not describe)."""
    from membench.registry import is_builtin_model, resolve_model

    def builtin(name: str) -> bool:
        try:
            return is_builtin_model(resolve_model(name))
        except MembenchError:  # a record of a model this checkout cannot import: not one of ours
            return False

    if summary.empty:
        return False
    quick = summary[summary["trained"] & (summary["preset"] == "quick")]
    return any(builtin(name) for name in quick["model"].unique())


def _preset_text(row: Any) -> str:
    """A point's preset column: 'untrained', the preset, or the preset and where its paused checkpoint stood."""
    if not row.trained:
        return "untrained"
    return f"{row.preset}, paused at {row.paused}" if row.paused else row.preset


def dataset_table(frame: pd.DataFrame) -> str:
    """The markdown table of one data set's points: ours beside the paper's (and the train-split
    median of trained models, where a record has one: well below the test median means memorised). A point whose
    model holds less than its budget says of which budget (two points of one curve may hold the same)."""
    with_train = bool(frame["train_median"].notna().any())
    grid = [[" ".join([line_label(row.curve, row.variant), *_task_tags(row, frame)]),
             f"{row.memory_k:.2f}" + (f" of {row.budget / 1000:.2f}" if row.memory_floats < row.budget else ""),
             f"{row.median:.2f} [{row.p5:.2f}, {row.p95:.2f}]",
             "" if pd.isna(row.paper) else f"{row.paper:.2f} [{row.paper_lo:.2f}, {row.paper_hi:.2f}]",
             row.num_patterns, row.batches, _preset_text(row),
             f"{row.train_time_s:.1f}" if 0 < row.train_time_s < 10 else f"{row.train_time_s:.0f}",
             f"{row.wall_time_s:.1f}"]
            + ([] if not with_train else ["" if pd.isna(row.train_median) else f"{row.train_median:.2f}"])
            for row in frame.itertuples()]
    headers = ["curve", "memory (k floats)", "ours", "paper", "N", "batches", "preset", "train s", "wall s"]
    if with_train:
        headers.append("train-split median")
    return tabulate(grid, headers=headers, tablefmt="github")


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown tables (one per data set): ours beside the paper's, with provenance."""
    if summary.empty:
        return "# Figure 3\n\nNo image runs found.\n"
    batches = "batch" if summary["batches"].max() == 1 else "batches"
    parts = [f"# Figure 3: distortion against memory size\n\nPer point: median per-batch error "
             f"[5th, 95th percentile over batches], batches of N images, {span(summary['batches'])} {batches} per "
             f"point. Paper: {CITATION} (read off the PDF).\n"]
    for dataset, frame in summary.groupby("dataset", sort=True):
        parts.append(f"## {TITLES[dataset]}\n\nData: {', '.join(sorted(set(frame['data'])))}; image size "
                     f"{', '.join(map(str, sorted(set(frame['image_size']))))}; device {', '.join(sorted(set(frame['device'])))}.\n\n"
                     + dataset_table(frame) + "\n")
    if _smoke_test(summary):
        parts.append(f"Note, {QUICK_CHANGES}.\n")
    commands = sorted(set(" | ".join(summary["command"]).split(" | ")))
    parts.append("Commands: " + "; ".join(f"`{c}`" for c in commands) + "\n")
    return "\n".join(parts)


def _axis_top(ours: pd.DataFrame, paper: pd.DataFrame | None) -> float | None:
    """The error axis' top: it fits our curves but raw slots and passthrough (the learned ones and mean fill),
    the paper's, and the unchanged query (passthrough) where it is within twice their top (Omniglot's, 256
    wrong pixels, is not; CIFAR's is); None with nothing to fit."""
    tops = [paper["hi"].max()] if paper is not None and len(paper) else []
    if not ours.empty:
        kept = ours[~ours.curve.isin(["raw_slots", "passthrough"])]
        tops += [kept["p95"].max()] if len(kept) else []
        passthrough = ours[ours.curve == "passthrough"]["p95"]
        if len(passthrough) and (not tops or passthrough.max() <= 2 * max(tops)):
            tops.append(passthrough.max())
    return 1.15 * max(tops) if tops else None


def plot(summary: pd.DataFrame, reference: pd.DataFrame | None, paths: list[Path]) -> list[Path]:
    """Distortion against memory (k floats), ours with 5-95% bars, the paper's dashed with bands. A memory-free
    curve (every point at 0 floats: passthrough, mean fill) is a dotted level across the axis; a curve with a
    point above the axis is named at its top, and one wholly above it is left out of the legend. One legend,
    beside the panels; a colour per curve and a marker per line, alike in both panels."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6))
    labels = sorted((set(summary["curve"]) if not summary.empty else set())
                    | (set(reference["model"]) if reference is not None else set()))
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    keys = ["curve", "variant", "preset", "num_patterns", *TASK_TAGS]
    markers: dict[str, str] = {}  # a line's marker by its legend label, the same in both panels
    any_paused = False
    for ax, (dataset, paper_name) in zip(axes, PAPER_DATASET.items()):
        paper = reference[reference.dataset == paper_name] if reference is not None else None
        if paper is not None:
            for label, points in paper.groupby("model"):
                points = points.sort_values("memory_k")
                ax.plot(points.memory_k, points.error, "--x", color=colours[label], alpha=0.7, label=f"paper: {label}")
                ax.fill_between(points.memory_k, points.lo, points.hi, color=colours[label], alpha=0.12)
        ours = summary[summary.dataset == dataset] if not summary.empty else summary
        top = _axis_top(ours, paper)
        above: list[str] = []
        ringed = False  # this axis has a paused checkpoint's point, labelled once
        for key, points in (ours.groupby(keys, sort=True) if not ours.empty else []):
            label, variant, preset, n = key[:4]
            points = points.sort_values("memory_k")
            tags = (([preset] if ours.preset.nunique() > 1 else [])
                    + ([f"N={n}"] if ours.num_patterns.nunique() > 1 else []) + _task_tags(points.iloc[0], ours))
            name = f"ours: {line_label(label, variant)}" + (f" ({', '.join(tags)})" if tags else "")
            if top is not None and (points["median"] > top).any():
                above.append(line_label(label, variant) + (f" ({points['median'].max():.0f})" if len(points) == 1 else ""))
            shown = top is None or (points["median"] <= top).any()
            if (points["memory_floats"] == 0).all():  # no memory: one level, across the axis
                ax.axhline(points["median"].iloc[0], color=colours[label], linestyle=":", linewidth=1.5,
                           label=f"{name}, no memory" if shown else None)
                continue
            marker = markers.setdefault(name, "osD^v"[len(markers) % 5])
            ax.errorbar(points.memory_k, points["median"], yerr=[points["median"] - points.p5, points.p95 - points["median"]],
                        fmt="-" + marker, color=colours[label], capsize=3, label=name if shown else None)
            paused = points[points["paused"] != ""]
            if len(paused):  # hollow rings over them: a paused checkpoint's points (--no-train)
                ax.plot(paused.memory_k, paused["median"], "o", mfc="none", mec="black", ms=11, zorder=4,
                        label=None if ringed else "a paused checkpoint's point")
                ringed = any_paused = True
        if top is not None:
            ax.set_ylim(0, top)
        if above:
            ax.text(0.98, 0.98, f"above the axis: {', '.join(above)} (see the table)", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, color="grey")
        if ours.empty:
            ax.text(0.5, 0.5, "no runs yet", transform=ax.transAxes, ha="center", color="grey")
        ax.set(xlabel="memory (thousands of float32 values)", ylabel="error per image", title=TITLES[dataset])
    legend_outside(axes)
    caption = (f"Ours: median over batches, bars 5th-95th percentile; dotted: a memory-free reference. Dashed: "
               f"{CITATION}. The paper does not state its Omniglot resolution; ours counts wrong pixels of 32x32. Nor "
               f"does it state CIFAR's scale: ours sums the squared error of the 3x32x32 values in [0, 1].")
    if any_paused:
        caption += " Ringed: evaluated from a checkpoint whose training was paused (membench run --no-train)."
    if _smoke_test(summary):
        caption += "\n" + QUICK_CHANGES + "."
        fig.suptitle("Smoke test of the quick presets (CPU): not a result", color="firebrick", fontsize=11)
    fig.text(0.5, 0.005, caption, ha="center", fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    for path in paths:
        save(fig, path)
    plt.close(fig)
    return paths


def figures(out_dir: Path, reference: Path | None = DEFAULT_REFERENCE, checkpoint_dir: Path | None = None,
            grids: bool = True) -> tuple[str, list[Path]]:
    """Write fig3.{md,csv,png,pdf}, the acceptance's checks of every trained preset's points but quick's
    (fig3_acceptance.md, once there are such points), the training curves and one reconstruction grid per (data set, curve) into `out_dir`.

    Grids use each curve's largest-memory run. Returns (markdown summary, written paths).
    """
    from membench.checkpoints import default_checkpoint_dir

    out_dir = Path(out_dir)
    records = image_records(out_dir)
    if not records:
        raise MembenchError(f"no finished Figure 3 run in {out_dir}/runs; run a fig3-* suite first, e.g. "
                            f"`membench run --suite fig3-omniglot --out {out_dir}`")
    paper = load_reference(reference)
    curves = read_curves(out_dir, images=True)  # every input (data, checkpoints) read before any output is written
    shown, skipped = select_grids(records, checkpoint_dir or default_checkpoint_dir(), out_dir) if grids else ({}, [])
    summary = summarise(records, paper)
    markdown = summary_markdown(summary)
    if skipped:
        markdown += ("\nReconstruction grids not redrawn (the reason is in the output of `membench figures`; a file "
                     "of the name, if any, is left as it was, and so is every other grid file here): "
                     + ", ".join(path.name for path in skipped) + ".\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "fig3.md", markdown)
    written = [out_dir / "fig3.md", out_dir / "fig3.csv"]
    acceptance = out_dir / "fig3_acceptance.md"
    presets = checked_presets(summary)  # the trained presets but quick, at their curves' own options
    if presets:
        write_text_atomic(acceptance, "\n".join(acceptance_markdown(summary, paper, preset) for preset in presets))
        written.insert(1, acceptance)
    else:  # none to read: no page of checks that read nothing (nor one left from earlier points)
        acceptance.unlink(missing_ok=True)
    columns = [c for c in summary.columns if c not in ("command", "train_config")]
    write_text_atomic(out_dir / "fig3.csv", summary[columns].to_csv(index=False, float_format="%.4f") if len(summary) else "")
    written += plot(summary, paper, [out_dir / "fig3.png", out_dir / "fig3.pdf"])
    written += training_curves(out_dir, curves, name="fig3_training_curves")
    written += [reconstruction_grid(record, path, episode, line_label(*record_curve(record)))
                for path, (record, episode) in shown.items()]
    if grids and not skipped:  # the grids of curves no longer drawn (or of old names) are not left beside today's
        for stale in set(out_dir.glob("fig3_recon_*.png")) - set(shown):  # (with a grid not redrawn, one of them
            stale.unlink()                                                    # may be its file under an old name)
    return markdown, written
