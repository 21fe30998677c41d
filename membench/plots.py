"""Figures drawn from stored results (never from numbers typed in by hand)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from membench.store import ResultsStore


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(out_dir: Path, models: tuple[str, ...] | None = None, name: str = "training_curves") -> list[Path]:
    """Plot loss and task error against step for every trained run in `out_dir` (PNG + PDF).

    One line per checkpoint (a checkpoint trained on several N serves several runs and is
    drawn once). Returns the written paths.
    """
    store = ResultsStore(out_dir)
    curves: dict[str, tuple[str, pd.DataFrame]] = {}
    for record in store.records():
        training = record.get("training")
        if not training or (models and record["model"] not in models):
            continue
        key = training["checkpoint_key"]
        if key not in curves:
            label = record["model"]
            if not training["config"].get("num_patterns"):
                label += f" N={record['task']['num_patterns']}"
            curves[key] = (label, pd.read_csv(Path(out_dir) / training["curve"]))
    if not curves:
        return []
    plt = _pyplot()
    fig, (ax_loss, ax_error) = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in sorted(curves.values(), key=lambda item: item[0]):
        ax_loss.plot(curve["step"], curve["loss"], label=label)
        ax_error.plot(curve["step"], curve["error"], label=label)
    ax_loss.set(xlabel="training step", ylabel="meta-training loss", yscale="log", title="loss")
    ax_error.set(xlabel="training step", ylabel="error on the training batch", title="task error (training episodes)")
    ax_error.legend(fontsize=7)
    fig.tight_layout()
    paths = [Path(out_dir) / f"{name}.png", Path(out_dir) / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths
