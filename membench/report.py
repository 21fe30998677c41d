"""Derive tables from stored run records: mean and 95% interval per cell, paper beside ours.

The records hold raw per-query errors; everything here is computed from them, so a
table can be rebuilt at any time with `membench report`. A cell is defined by the task
(kind, dimension, erased count, data...), the budget, the model, its options, its preset
and N; seeds pool only inside a cell, and records that repeat another's episodes count
once (`distinct`). Each task and budget gets its own table, with its own header.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from membench.budget import TABLE1_BUDGET
from membench.errors import MembenchError
from membench.cells import distinct, task_key
from membench.store import ResultsStore, no_folder_in_the_way, read_table, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO_ROOT / "results" / "reference" / "paper_table1.csv"
PAPER_TASK = {"kind": "binary", "dim": 128, "erased": 64}  # Table 1's task (the paper's values apply to it alone)
CITATION = ("Bartunov, Rae, Osindero & Lillicrap, 'Meta-Learning Deep Energy-Based Memory Models', "
            "arXiv:1910.02720, Table 1")


def episode_means(record: dict[str, Any]) -> np.ndarray:
    """Mean error of each evaluated episode (batch of N queries on one memory), in evaluation order."""
    n = record["task"]["num_patterns"]
    errors = np.asarray(record["errors"], dtype=float)
    if errors.size % n:
        raise MembenchError(f"record {record['run_id']} holds {errors.size} errors, not a whole number of N={n} "
                            "episodes; rerun its `membench run` command with --force to replace it")
    return errors.reshape(-1, n).mean(axis=1)


def mean_interval(episodes: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval of the mean over episodes (per-episode means: the queries of
    one episode read one memory, so they are not independent)."""
    mean = float(episodes.mean())
    if len(episodes) < 2:  # no spread to estimate: no interval
        return mean, math.nan, math.nan
    if episodes.std() == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(episodes) - 1, loc=mean, scale=stats.sem(episodes))
    return mean, float(low), float(high)


def load_reference(path: Path | None = DEFAULT_REFERENCE) -> pd.DataFrame | None:
    """The paper's Table 1 as a long frame (model, num_patterns, paper), or None if absent."""
    if path is None or not Path(path).exists():
        return None
    fix = "omit --reference for the shipped results/reference/paper_table1.csv (restore it from git if broken)"
    wide = read_table(path, "a table of the paper's Table 1", ("method",), fix, comment="#").set_index("method")
    if (wide.empty or not all(str(c).isdigit() for c in wide.columns)
            or not all(map(pd.api.types.is_numeric_dtype, wide.dtypes))):
        raise MembenchError(f"{path} is not a table of the paper's Table 1 (a row a method, its columns N values "
                            f"with numbers); {fix}")
    values = wide.to_numpy(float)
    given = values[~np.isnan(values)]  # a blank cell: the paper gives no value there
    if wide.index.duplicated().any() or not (np.isfinite(given) & (given >= 0)).all():
        raise MembenchError(f"{path} is not a table of the paper's Table 1 (each method once, every value given a "
                            f"finite non-negative number of error bits); {fix}")
    long = wide.stack().rename("paper").reset_index()
    long.columns = ["model", "num_patterns", "paper"]
    long = long.dropna(subset=["paper"])  # blank cells: no paper value to print
    long["num_patterns"] = long["num_patterns"].astype(int)
    return long


def training_time(records: list[dict[str, Any]]) -> float:
    """Seconds of meta-training behind `records`, each checkpoint counted once."""
    checkpoints = {r["training"]["checkpoint_key"]: r["training"]["train_time_s"] for r in records if r.get("training")}
    return float(sum(checkpoints.values()))


def trained_on(records: list[dict[str, Any]]) -> str:
    """Which devices, at which commits, meta-trained the checkpoints behind `records` (their histories)."""
    histories = {r["training"]["checkpoint_key"]: r["training"].get("history") for r in records if r.get("training")}
    commits: dict[str, set[str]] = {}
    for stretch in (s for history in histories.values() if history for s in history):
        where = f"{stretch['device_name']} ({stretch['device']})"
        commits.setdefault(where, set()).add((stretch.get("commit") or "unknown")[:10] + _dirty(stretch.get("dirty")))
    parts = [f"{where} at {', '.join(sorted(c))}" for where, c in sorted(commits.items())]
    unknown = sum(history is None for history in histories.values())
    if unknown:
        parts.append(f"{unknown} checkpoint{'s' if unknown > 1 else ''} without a training history")
    return "; ".join(parts)


def options_text(options: dict[str, Any]) -> str:
    """Run options as `key=value, ...`, sorted ('' for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def row_label(model: str, preset: str, trained: bool, options: dict[str, Any] | None = None) -> str:
    """Table row of a model: its name, the training preset unless it is the default 'quick', and its options."""
    label = f"{model} ({preset})" if trained and preset != "quick" else model
    if options:
        label += f" [{options_text(options)}]"
    return label


def _table_order(table: str) -> tuple[bool, str, int]:
    """Tables in order: Table 1's own first, then by task and by budget as a number (2080 before 16512)."""
    key = json.loads(table)
    return not is_paper_table(table), json.dumps(key["task"], sort_keys=True), key["budget"]


def _versions(group: pd.DataFrame) -> str:
    envs = list(group["environment"])
    devices = sorted({e["device"] for e in envs})
    torches = sorted({str(e.get("torch") or "unknown") for e in envs})
    return f"{' '.join(devices)} · torch {' '.join(torches)}"


def _dirty(flag: bool | None) -> str:
    """A commit's note: ' (dirty)' for a tree with changes, ' (clean unknown)' where not recorded (maybe dirty)."""
    return " (dirty)" if flag else " (clean unknown)" if flag is None else ""


def commits_text(records: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({(r["environment"].get("git_commit") or "unknown")[:10] + _dirty(r["environment"]
                                                                                             .get("git_dirty"))
                             for r in records}))


def summarise(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell (task, budget, model, options, preset, N): pooled over seeds, with provenance."""
    rows = []
    frame = pd.DataFrame([{**r, "table": task_key(r), "num_patterns": r["task"]["num_patterns"],
                           "options_json": json.dumps(r["options"], sort_keys=True)} for r in records])
    keys = ["table", "model", "options_json", "preset", "num_patterns"]
    for (table, model, options, preset, num_patterns), group in frame.groupby(keys, sort=False):
        mean, low, high = mean_interval(np.concatenate([episode_means(r) for r in group.to_dict("records")]))
        num_queries = sum(len(e) for e in group["errors"])
        trained = list({t["checkpoint_key"]: t for t in group["training"] if t}.values())
        rows.append({
            "table": table, "model": model, "options": options, "preset": preset,
            "row": row_label(model, preset, bool(trained), json.loads(options)), "num_patterns": int(num_patterns),
            "mean": mean, "ci_low": low, "ci_high": high, "num_queries": num_queries,
            "memory_floats": int(group["memory_floats"].max()), "budget": int(group["budget"].iloc[0]),
            "seeds": " ".join(str(s) for s in sorted(group["seed"])),
            "train_time_s": round(sum(t["train_time_s"] for t in trained), 1) if trained else 0.0,
            "trained_on": ", ".join(sorted(map(updates_text, trained))),
            "paused": any(t.get("finished") is False for t in trained),  # a paused checkpoint's (--no-train)
            "wall_time_s": round(float(group["wall_time_s"].sum()), 2),
            "device": " ".join(sorted({e["device"] for e in group["environment"]})),
            "versions": _versions(group),
            "commit": commits_text(group.to_dict("records")),
            "command": " | ".join(sorted(set(group["command"]))),
        })
    return pd.DataFrame(rows).sort_values(["table", "row", "num_patterns"], kind="stable").reset_index(drop=True)


def updates_text(training: dict[str, Any]) -> str:
    """A record's training as 'updates × episodes', a paused checkpoint's (`--no-train`) as 'done of planned ×
    episodes'."""
    config = training.get("config") or {}
    steps = training.get("steps", "?")
    if training.get("finished") is False:
        steps = f"{steps} of {config.get('steps', '?')}"
    return f"{steps} × {config.get('batch_size', '?')}"


def cell_text(row: pd.Series, decimals: int = 2) -> str:
    half = (row["ci_high"] - row["ci_low"]) / 2
    text = f"{row['mean']:.{decimals}f} ± " + ("n/a" if math.isnan(half) else f"{half:.{decimals}f}")
    if "paper" in row and pd.notna(row["paper"]):
        text += f" ({row['paper']:g})"
    return text


def _title(table: str) -> str:
    key = json.loads(table)
    task, budget = key["task"], key["budget"]
    if task.get("kind") == "binary" and task.get("flip"):
        what = f"{task['dim']}-bit patterns, {round(task['flip'] * task['dim'])} bits flipped (none erased)"
    elif task.get("kind") == "binary":
        what = f"{task['dim']}-bit patterns, {task['erased']} bits erased"
    else:
        what = ", ".join(f"{k} {v}" for k, v in sorted(task.items()))
    return f"error {'bits' if task.get('kind') == 'binary' else 'per query'} retrieving {what}; budget {budget} float32"


def is_paper_table(table: str) -> bool:
    """True for Table 1's own task and budget (128-bit patterns, 64 erased, 8256 floats)."""
    return json.loads(table) == {"task": PAPER_TASK, "budget": TABLE1_BUDGET}


def grid(summary: pd.DataFrame, paper: pd.DataFrame | None) -> tuple[list[list[str]], list[str]]:
    """Rows (model x N cells) and headers of one table; the paper's values only for Table 1's task."""
    if paper is not None and is_paper_table(summary["table"].iloc[0]):
        summary = summary.merge(paper, on=["model", "num_patterns"], how="left")
    order = list(dict.fromkeys(paper["model"])) if paper is not None else []
    model_of = dict(zip(summary["row"], summary["model"]))
    rows = sorted(model_of, key=lambda r: (order.index(model_of[r]) if model_of[r] in order else len(order), r))
    columns = sorted(summary["num_patterns"].unique())
    versions = dict(zip(summary["row"], summary["versions"]))
    per_row = len(set(versions.values())) > 1
    trained = summary.groupby("row")["trained_on"].agg(lambda texts: ", ".join(sorted(set(texts) - {""})))
    with_training = bool(trained.str.len().any())
    cells = []
    for r in rows:
        line = [r]
        for n in columns:
            match = summary[(summary.row == r) & (summary.num_patterns == n)]
            line.append(cell_text(match.iloc[0]) if len(match) else "")
        cells.append(line + ([trained[r]] if with_training else []) + [span(summary[summary.row == r]["memory_floats"])]
                     + ([versions[r]] if per_row else []))
    headers = (["model \\ N"] + [str(n) for n in columns] + (["updates × episodes"] if with_training else [])
               + ["floats used"] + (["device · torch"] if per_row else []))
    return cells, headers


def span(counts: pd.Series) -> str:
    """Whole numbers (a row's floats over N, queries per cell): one count, or the range 'low–high'."""
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high}"


def seed_sets(seeds: pd.Series) -> str:
    """The seeds each cell pools ('0 1 2' a cell), with how many cells pool them where they differ."""
    counts = sorted(seeds.value_counts().items(), key=lambda item: (-item[1], item[0]))  # most cells first
    if len(counts) == 1:
        return str(counts[0][0])
    return ", ".join(f"{sets} in {count} cell{'s' if count > 1 else ''}" for sets, count in counts)


def _image_summaries(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the image-task `records` each command summarises: the image capacity suites' `capacity`,
    the others (Figure 3's) `figures`."""
    from membench.suites import SUITES, ImageCapacitySuite

    commands = ["capacity" if isinstance(SUITES.get(r.get("suite")), ImageCapacitySuite) else "figures"
                for r in records]
    return {command: commands.count(command) for command in sorted(set(commands))}


def table1(out_dir: Path, reference: Path | None = DEFAULT_REFERENCE, write: bool = True) -> str:
    """Build the error tables from `out_dir/runs` (one per task and budget); write table1.{md,csv,tex}.

    Image-task runs are left to `membench figures` (Figure 3) and `membench capacity`. Returns the markdown.
    """
    all_records = ResultsStore(out_dir).records()
    records = [r for r in all_records if r["task"]["kind"] == "binary"]
    if not records:
        hint = "".join(f" ({count} image-task runs are summarised by `membench {command} --out {out_dir}`)"
                       for command, count in _image_summaries(all_records).items())
        raise MembenchError(f"no finished binary-task runs in {out_dir}/runs{hint}; "
                            f"run `membench run --out {out_dir}` first")
    records, dropped = distinct(records)
    summary = summarise(records)
    paper = load_reference(reference)
    sections, latex, csv_frames = [], [], []
    tables = sorted(summary["table"].unique(), key=_table_order)  # Table 1's own first, then by budget
    for table in tables:
        part = summary[summary.table == table]
        table_records = [r for r in records if task_key(r) == table]
        cells, headers = grid(part, paper)
        with_paper = paper is not None and is_paper_table(table)
        versions = sorted(set(part["versions"]))
        learned = any(r.get("training") for r in table_records)
        devices = trained_on(table_records)
        training = (f"; meta-training behind these records {training_time(table_records):.1f} s (each checkpoint "
                    f"counted once)" + (f", meta-trained on {devices}" if devices else "")) if learned else ""
        provenance = [
            "Mean error per query ± half-width of the 95% t-interval over episodes (the queries of one "
            "episode share its memory, so the interval is over per-episode means; n/a: one episode)" +
            (f"; in parentheses: the paper's value ({CITATION})." if with_paper else ".") +
            (" A meta-learned row's interval is that of its one trained checkpoint: retraining from another seed "
             "can move the row by more (membench's results/diagnostics/ebmm-seeds)." if learned else ""),
            f"Queries per cell: {span(part['num_queries'])}; seeds: {seed_sets(part['seeds'])}; "
            + (f"device · torch: {versions[0]}; " if len(versions) == 1 else "device and torch per row; ")
            + f"membench {' '.join(sorted({str(r['environment'].get('membench')) for r in table_records}))}; "
            f"commits: {commits_text(table_records)}; "
            f"wall time of the runs {part['wall_time_s'].sum():.1f} s{training}.",
            "Commands: " + "; ".join(f"`{c}`" for c in sorted(set(" | ".join(part["command"]).split(" | ")))),
        ]
        title = ("Table 1: " if with_paper else "") + _title(table)
        sections.append(f"## {title}\n\n" + "\n\n".join(provenance) + "\n\n"
                        + tabulate(cells, headers=headers, tablefmt="github") + "\n")
        latex.append(f"% {title}\n" + "\n".join(f"% {line}" for line in provenance) + "\n"
                     + tabulate(cells, headers=headers, tablefmt="latex_booktabs").replace("±", r"$\pm$") + "\n")
        csv_frames.append(part.merge(paper, on=["model", "num_patterns"], how="left") if with_paper else part)
    notes = []
    if dropped:
        notes.append(f"{dropped} record(s) repeat the episodes of another record of the same cell and seed "
                     "(a copy, the same run from another suite, fewer --queries, or a paused checkpoint's "
                     "evaluation) and were counted once.")
    images = [r for r in all_records if r["task"]["kind"] != "binary"]
    for command, count in _image_summaries(images).items():
        notes.append(f"{count} image-task run(s) are summarised by `membench {command}`.")
    markdown = "# Error tables\n\n" + "".join(f"{n}\n\n" for n in notes) + "\n".join(sections)
    if write:
        no_folder_in_the_way([Path(out_dir) / f"table1.{suffix}" for suffix in ("md", "csv", "tex")])
        write_text_atomic(Path(out_dir) / "table1.md", markdown)
        write_text_atomic(Path(out_dir) / "table1.csv",
                          pd.concat(csv_frames).to_csv(index=False, float_format="%.4f"))
        write_text_atomic(Path(out_dir) / "table1.tex", "\n".join(latex))
    return markdown
