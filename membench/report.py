"""Derive tables from stored run records: mean and 95% interval per cell, paper beside ours.

The records hold raw per-query errors; everything here is computed from them, so a
table can be rebuilt at any time with `membench report`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from membench.store import ResultsStore, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "paper_table1.csv"
CITATION = ("Bartunov, Rae, Osindero & Lillicrap, 'Meta-Learning Deep Energy-Based Memory Models', "
            "arXiv:1910.02720, Table 1")


def mean_interval(errors: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval of the mean over queries."""
    mean = float(errors.mean())
    if len(errors) < 2 or errors.std() == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(errors) - 1, loc=mean, scale=stats.sem(errors))
    return mean, float(low), float(high)


def load_reference(path: Path | None = DEFAULT_REFERENCE) -> pd.DataFrame | None:
    """The paper's Table 1 as a long frame (model, num_patterns, paper), or None if absent."""
    if path is None or not Path(path).exists():
        return None
    wide = pd.read_csv(path, comment="#").set_index("method")
    long = wide.stack().rename("paper").reset_index()
    long.columns = ["model", "num_patterns", "paper"]
    long["num_patterns"] = long["num_patterns"].astype(int)
    return long


def training_time(records: list[dict[str, Any]]) -> float:
    """Seconds of meta-training behind `records`, each checkpoint counted once."""
    checkpoints = {r["training"]["checkpoint_key"]: r["training"]["train_time_s"] for r in records if r.get("training")}
    return float(sum(checkpoints.values()))


def row_label(model: str, preset: str, trained: bool) -> str:
    """Table row of a model: its name, with the training preset unless that is the default 'quick'."""
    return f"{model} ({preset})" if trained and preset != "quick" else model


def summarise(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, preset, N): pooled over seeds, with provenance columns."""
    rows = []
    frame = pd.DataFrame([{**r, "num_patterns": r["task"]["num_patterns"]} for r in records])
    for (model, preset, num_patterns), group in frame.groupby(["model", "preset", "num_patterns"], sort=False):
        errors = np.concatenate([np.asarray(e, dtype=float) for e in group["errors"]])
        mean, low, high = mean_interval(errors)
        trained = list({t["checkpoint_key"]: t for t in group["training"] if t}.values())
        rows.append({
            "model": model, "row": row_label(model, preset, bool(trained)), "num_patterns": int(num_patterns), "mean": mean, "ci_low": low, "ci_high": high,
            "num_queries": len(errors), "memory_floats": int(group["memory_floats"].max()),
            "budget": int(group["budget"].iloc[0]), "seeds": " ".join(str(s) for s in sorted(group["seed"])),
            "preset": preset,
            "train_time_s": round(sum(t["train_time_s"] for t in trained), 1) if trained else 0.0,
            "wall_time_s": round(float(group["wall_time_s"].sum()), 2),
            "device": " ".join(sorted({r["device"] for r in group["environment"]})),
            "command": " | ".join(sorted(set(group["command"]))),
        })
    return pd.DataFrame(rows).sort_values(["row", "num_patterns"], kind="stable").reset_index(drop=True)


def _cell(row: pd.Series, decimals: int = 2) -> str:
    half = (row["ci_high"] - row["ci_low"]) / 2
    text = f"{row['mean']:.{decimals}f} ± {half:.{decimals}f}"
    if "paper" in row and pd.notna(row["paper"]):
        text += f" ({row['paper']:g})"
    return text


def table1(out_dir: Path, reference: Path | None = DEFAULT_REFERENCE, write: bool = True) -> str:
    """Build the bit-error table from `out_dir/runs`; write table1.{md,csv,tex}; return the markdown."""
    records = ResultsStore(out_dir).records()
    if not records:
        from membench.errors import MembenchError

        raise MembenchError(f"no finished runs in {out_dir}/runs; run `membench run --out {out_dir}` first")
    summary = summarise(records)
    paper = load_reference(reference)
    if paper is not None:
        summary = summary.merge(paper, on=["model", "num_patterns"], how="left")
    order = list(dict.fromkeys(paper["model"])) if paper is not None else []
    model_of = dict(zip(summary["row"], summary["model"]))
    rows = sorted(model_of, key=lambda r: (order.index(model_of[r]) if model_of[r] in order else len(order), r))
    columns = sorted(summary["num_patterns"].unique())
    grid = [[r] + [_cell(summary[(summary.row == r) & (summary.num_patterns == n)].iloc[0])
                   if ((summary.row == r) & (summary.num_patterns == n)).any() else "" for n in columns]
            for r in rows]
    headers = ["model \\ N"] + [str(n) for n in columns]
    provenance = [
        f"Mean error bits per query ± half-width of the 95% t-interval over queries; "
        f"in parentheses: the paper's value ({CITATION})." if paper is not None else
        "Mean error bits per query ± half-width of the 95% t-interval over queries.",
        f"Queries per cell: {summary['num_queries'].min()}–{summary['num_queries'].max()}; "
        f"seeds: {', '.join(sorted(set(summary['seeds'])))}; budget: {', '.join(map(str, sorted(set(summary['budget']))))} float32; "
        f"device: {', '.join(sorted(set(summary['device'])))}; torch {records[0]['environment']['torch']}, "
        f"membench {records[0]['environment']['membench']}; wall time of the runs {summary['wall_time_s'].sum():.1f} s; "
        f"meta-training {training_time(records):.1f} s (each checkpoint counted once).",
        "Commands: " + "; ".join(f"`{c}`" for c in sorted(set(" | ".join(summary["command"]).split(" | ")))),
    ]
    markdown = "# Table 1: error bits retrieving 128-bit patterns, 64 bits erased\n\n" + "\n\n".join(provenance) + \
        "\n\n" + tabulate(grid, headers=headers, tablefmt="github") + "\n"
    if write:
        write_text_atomic(Path(out_dir) / "table1.md", markdown)
        write_text_atomic(Path(out_dir) / "table1.csv", summary.to_csv(index=False, float_format="%.4f"))
        latex = "\n".join(f"% {line}" for line in provenance) + "\n" + \
            tabulate(grid, headers=headers, tablefmt="latex_booktabs").replace("±", r"$\pm$") + "\n"
        write_text_atomic(Path(out_dir) / "table1.tex", latex)
    return markdown
