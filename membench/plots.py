"""Figures drawn from stored results (never from numbers typed in by hand)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from membench.errors import MembenchError
from membench.options import is_int
from membench.cells import latest_versions
from membench.report import row_label
from membench.store import ResultsStore, read_table, write_atomic

SMOOTH = 10  # logged rows in the rolling mean of training curves


def save(fig, path: Path) -> None:
    """Write a figure (atomically); PDFs without a creation date, so an unchanged figure gives unchanged bytes."""
    suffix = Path(path).suffix
    write_atomic(path, lambda handle: fig.savefig(handle, format=suffix[1:], dpi=130,
                                                  metadata={"CreationDate": None} if suffix == ".pdf" else None))


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Curves = dict[str, tuple[str, str, pd.DataFrame]]  # checkpoint key -> (line label, task, curve: step, loss, error)


def read_curves(out_dir: Path, images: bool | None = None) -> Curves:
    """The training curve of every trained run in `out_dir` (of image tasks only with `images`,
    of binary ones only with images=False), one per checkpoint, with the task its error is counted on (its kind
    and unit, e.g. "omniglot, pixels"). A checkpoint trained on several N serves several runs; none of a model's
    older source version, as in the tables; none paused before its first logged step, which has no point to draw.
    MembenchError naming a missing, unreadable or cut-short curve file."""
    store = ResultsStore(out_dir)
    curves: Curves = {}
    for record in latest_versions(store.records())[0]:
        training = record.get("training")
        if not training:
            continue
        if images is not None and images != (record["task"]["kind"] != "binary"):
            continue
        key = training["checkpoint_key"]
        if key not in curves:
            label = row_label(record["model"], record["preset"], trained=True)
            task = f"{record['task']['kind']}, {record.get('task_unit', 'error')}"
            if record["task"]["kind"] != "binary":  # a rate-sweep point: its Figure 3 line, memory size, preset
                from membench.sweeps import line_label, record_curve

                label = f"{line_label(*record_curve(record))} ({record['memory_floats']} floats, {record['preset']})"
            elif not training["config"].get("num_patterns"):
                label += f" N={record['task']['num_patterns']}"
            path = Path(out_dir) / training["curve"]
            fix = ("restore it from git, copy it from the folder its record came from (training/ beside runs/), or "
                   "rerun the run with --force")
            steps, every = training.get("steps"), training["config"].get("log_every")
            logged = steps >= every if is_int(steps) and is_int(every) and every > 0 else None  # None: not recorded
            if path.is_file() and path.stat().st_size <= 1 and not logged:
                continue  # paused before its first logged step, written as one newline before the curve kept its header
            curve = read_table(path, f"the training curve of {record['run_id']}", ("step", "loss", "error"), fix)
            if curve.empty and not logged:
                continue  # paused before its first logged step: nothing to draw
            for column in ("step", "loss", "error"):
                try:
                    curve[column] = pd.to_numeric(curve[column]).astype(float)  # (an int past int64: object dtype)
                except (TypeError, ValueError, OverflowError):
                    raise MembenchError(f"{path} is not the training curve of {record['run_id']} (its {column} "
                                        f"column holds text); {fix}") from None
                if not np.isfinite(curve[column]).all():
                    raise MembenchError(f"{path} is not the training curve of {record['run_id']} (its {column} "
                                        f"column holds a value that is not a finite number); {fix}")
            last = curve["step"].max() if not curve.empty else 0
            if logged and last < steps - every:
                raise MembenchError(f"{path} ends at step {last:g}, but its record {record['run_id']} trained "
                                    f"{steps} updates, logged every {every}: it is cut short; {fix}")
            curves[key] = (label, task, curve)
    return curves


def training_curves(out_dir: Path, curves: Curves, name: str = "training_curves") -> list[Path]:
    """Plot loss and task error against step of `curves` (`read_curves(out_dir)`'s) into `out_dir` (PNG + PDF):
    the loss, then one error panel per task (errors in different units never share an axis), one line per
    checkpoint, the legend beside them. Returns the written paths."""
    if not curves:
        return []
    plt = pyplot()
    tasks = sorted({task for _, task, _ in curves.values()})
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(6 * (1 + len(tasks)) + 3, 4.4), squeeze=False)
    ax_loss, panels = axes[0][0], dict(zip(tasks, axes[0][1:]))
    labels = sorted({label for label, _, _ in curves.values()})  # a colour per label: one line of the legend,
    palette = plt.cm.tab10 if len(labels) <= 10 else plt.cm.tab20  # alike in every panel
    for label, task, curve in sorted(curves.values(), key=lambda item: (item[1], item[0])):
        colour = palette(labels.index(label) % palette.N)
        style = "-" if len(tasks) == 1 else ("-", "--", ":", "-.")[tasks.index(task) % 4]  # the loss panel's tasks
        for ax, column in ((ax_loss, "loss"), (panels[task], "error")):
            ax.plot(curve["step"], curve[column], color=colour, alpha=0.25, linewidth=0.8, linestyle=style)
            ax.plot(curve["step"], curve[column].rolling(SMOOTH, min_periods=1).mean(), color=colour, label=label,
                    linestyle=style)
    losses = pd.concat([curve["loss"] for _, _, curve in curves.values()])
    ax_loss.set(xlabel="training step", ylabel="meta-training loss", title="loss")
    if (losses > 0).all():
        ax_loss.set_yscale("log")
    else:  # a log axis would drop a loss at or below 0: linear within the smallest nonzero loss's size
        nonzero = losses[losses != 0].abs()
        ax_loss.set_yscale("symlog", linthresh=float(nonzero.min()) if len(nonzero) else 1.0)
    for task, ax in panels.items():
        kind, unit = task.split(", ", 1)
        ax.set(xlabel="training step", ylabel=f"error on the training batch ({unit})",
               title="task error (training episodes)" + ("" if kind == "binary" else f": {kind}"))
    legend_outside(axes[0], fontsize=6)
    styles = "" if len(tasks) == 1 else "; line style by task: " + ", ".join(
        f"{task.split(', ')[0]} {('solid', 'dashed', 'dotted', 'dash-dot')[i % 4]}" for i, task in enumerate(tasks))
    fig.text(0.5, 0.005, f"Faint: each logged training batch (models trained on several N draw one N per batch); "
             f"bold: rolling mean over {SMOOTH} logs. A step is one update of the model's own batch of episodes"
             f"{styles}.", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    paths = save_figure(fig, out_dir, name)
    plt.close(fig)
    return paths


def plot_line(ax, frame, x: str, label: str, style: dict[str, Any]) -> None:
    """One row's mean error against column `x` of `frame` (sorted by it) on `ax`, its 95% interval shaded."""
    frame = frame.sort_values(x)
    ax.plot(frame[x], frame["mean"], markersize=4, markerfacecolor="none", label=label, **style)
    ax.fill_between(frame[x], frame["ci_low"], frame["ci_high"], color=style["color"], alpha=0.2, linewidth=0)


def legend_outside(axes, fontsize: float = 7) -> None:
    """One legend for the lines of every axis in `axes` (each label once, in drawing order), right of the last
    one, where it hides no data (a label drawn only in a later panel is listed too)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:  # nothing drawn: no empty frame
        return
    axes[-1].legend(list(handles.values()), list(handles), fontsize=fontsize, loc="upper left",
                    bbox_to_anchor=(1.02, 1), borderaxespad=0)


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """`fig` as out_dir/name.png and .pdf; returns the two paths."""
    paths = [Path(out_dir) / f"{name}.png", Path(out_dir) / f"{name}.pdf"]
    for path in paths:
        save(fig, path)
    return paths


def log2_axis(ax, values) -> None:
    """A base-2 log x axis with a tick at each of `values`."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values))
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()
