"""Capacity suites: error against N, against the budget, under bit flips.

Suites (defined in membench.suites, each a `CapacitySuite`: a `Suite` that also sweeps budgets
and flip rates):
- capacity-n: N = 8 ... 256 patterns written, Table 1's task (128 bits, 64 erased) and budget (8256);
- capacity-n-learned: the same grid for the meta-learned memories, evaluated from Table 1's quick
  checkpoints (trained on N = 16 ... 96, so N = 8 and N > 96 are outside their training);
- capacity-budget: N = 64, budgets 2080 ... 33024 float32 (16 to 258 whole 128-bit patterns);
- capacity-flip: N = 16 ... 96 with 10, 20 or 30% of the bits flipped (none erased), budget 8256.
A run whose model would hold more float32 values than its point's budget is left out when a
suite expands (`split_by_budget`): a Hopfield network on 128 units holds 8256 values at every
budget, so it has no cell at 2080 or 4160 (and at 16512 and 33024 it still uses 8256).

Image suites (capacity-omniglot, capacity-cifar): see membench.capacity_images.

`capacity_figures(out_dir)` draws, from the binary-task records, the three figures (error against
N, against the budget at N = 64, against N per flip rate) and writes capacity.md (one table per
task and budget, model x N, mean ± half-width of the 95% t-interval) and capacity.csv; and, from
the image-task records, the outputs of `membench.capacity_images.image_capacity_figures`. The
binary figures themselves are drawn in membench.capacity_plots.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from membench.errors import DatasetMissing, MembenchError
from membench.run_spec import RunSpec
from membench.suites import BUDGET_NUM_PATTERNS, CAPACITY_MODELS, declared_count


# ---------------------------------------------------------------- figures and tables from records

def task_of(table: str) -> tuple[dict[str, Any], int]:
    """A table's key (`cells.task_key`) -> (task without N, budget)."""
    key = json.loads(table)
    return key["task"], key["budget"]


def table_title(table: str) -> str:
    """A binary table's title: its task (bits erased or flipped) and budget."""
    task, budget = task_of(table)
    dim = task.get("dim", 128)
    if task.get("flip"):
        what = f"{round(task['flip'] * dim)} of {dim} bits flipped (flip {task['flip']:g}), none erased"
    else:
        what = f"{task.get('erased')} of {dim} bits erased"
    return f"{dim}-bit patterns, {what}; budget {budget} float32 ({budget // dim} whole patterns)"


def table_order(table: str) -> tuple:
    """Sort key of a binary table: erasure before flips, then dimension, bits erased, budget."""
    task, budget = task_of(table)
    return (float(task.get("flip", 0.0)), task.get("dim", 0), task.get("erased", 0), budget)


def row_order(rows: list[str], model_of: dict[str, str]) -> list[str]:
    """`rows` in CAPACITY_MODELS' order of their models (`model_of`: row -> model), others after, by name."""
    order = list(CAPACITY_MODELS)
    return sorted(rows, key=lambda r: (order.index(model_of[r]) if model_of[r] in order else len(order), r))


def _absent(summary, table: str) -> list[str]:
    """Rows swept over budgets elsewhere (run at two or more budgets) that the table lacks because their
    state would exceed its budget; rows run at one budget only (e.g. the learned ones) are not expected."""
    task, budget = task_of(table)
    here = set(summary[summary.table == table]["row"])
    budgets = summary.groupby("row")["budget"].nunique()
    notes = []
    for row, group in summary[~summary.row.isin(here)].groupby("row", sort=True):
        if budgets[row] < 2:
            continue
        n = int(summary[summary.table == table]["num_patterns"].min())
        count = count_at(group.iloc[0], task, budget, n)
        if count is not False and (count is None or count > budget):
            notes.append(f"{row} ({'over budget' if count is None else f'{count} floats'})")
    return notes


def missing_because(record, budget: int) -> str:
    """Why a row's model has no cell at `budget` (N = BUDGET_NUM_PATTERNS): as the capacity summary says it."""
    count = count_at(record, task_of(record["table"])[0], budget, BUDGET_NUM_PATTERNS)
    return "cannot be built" if count is False else "over budget" if count is None or count > budget else "not run"


def count_at(record, task: dict[str, Any], budget: int, num_patterns: int) -> int | None | bool:
    """The float32 count the model of `record` (a summary row) declares at `budget` on `task` with N =
    `num_patterns`: None when it refuses to be built within the budget, False when it cannot be built
    at all."""
    spec = RunSpec(suite="check", model=record["model"], task={**task, "num_patterns": num_patterns},
                   budget=budget, seed=0, queries=1, preset=record["preset"], options=json.loads(record["options"]))
    try:
        return declared_count(spec)
    except MembenchError:
        return False


def summary_and_records(records: list[dict[str, Any]]):
    """(summary frame of `records` with half_width, records kept, duplicates dropped)."""
    from membench.cells import distinct
    from membench.report import summarise

    records, dropped = distinct(records)
    summary = summarise(records)
    summary["half_width"] = (summary["ci_high"] - summary["ci_low"]) / 2
    return summary, records, dropped


def capacity_summary(out_dir: Path):
    """(summary frame of the binary-task records in out_dir, records kept, duplicates dropped)."""
    from membench.store import ResultsStore

    records = [r for r in ResultsStore(out_dir).records() if r["task"]["kind"] == "binary"]
    if not records:
        raise MembenchError(f"no finished binary-task runs in {out_dir}/runs; run a capacity-* suite first, e.g. "
                            f"`membench run --suite capacity-n --out {out_dir}`")
    summary, records, dropped = summary_and_records(records)
    tasks = [task_of(t) for t in summary["table"]]
    summary["dim"] = [t.get("dim") for t, _ in tasks]
    summary["erased"] = [t.get("erased") for t, _ in tasks]
    summary["flip"] = [float(t.get("flip", 0.0)) for t, _ in tasks]
    return summary, records, dropped


def table_section(summary, records: list[dict[str, Any]], table: str, title: str, notes: list[str]) -> str:
    """The markdown section of one task and budget: `title`, provenance, `notes`, then model x N cells."""
    from tabulate import tabulate

    from membench.cells import task_key
    from membench.report import cell_text, commits_text, seed_sets, span

    part = summary[summary.table == table]
    model_of = dict(zip(part["row"], part["model"]))
    columns = sorted(part["num_patterns"].unique())
    cells = []
    for row in row_order(list(model_of), model_of):
        line = [row]
        for n in columns:
            match = part[(part.row == row) & (part.num_patterns == n)]
            line.append(cell_text(match.iloc[0]) if len(match) else "")
        cells.append(line)
    commits = commits_text([r for r in records if task_key(r) == table])
    paused = part[part["paused"]].groupby("row")["trained_on"].agg(lambda texts: ", ".join(sorted(set(texts))))
    lines = [f"Queries per cell: {span(part['num_queries'])}; seeds: {seed_sets(part['seeds'])}; "
             f"device · torch: {', '.join(sorted(set(part['versions'])))}; "
             f"commits: {commits}; wall time of the runs {part['wall_time_s'].sum():.1f} s.", *notes]
    if len(paused):
        lines.append("Evaluated from a paused checkpoint (`--no-train`; updates done of planned × episodes): "
                     + "; ".join(f"{row} ({updates})" for row, updates in paused.items()) + ".")
    return (f"## {title}\n\n" + "\n\n".join(lines) + "\n\n"
            + tabulate(cells, headers=["model \\ N"] + [str(n) for n in columns], tablefmt="github") + "\n")


def capacity_markdown(summary, records: list[dict[str, Any]], dropped: int) -> str:
    sections = []
    for table in sorted(summary["table"].unique(), key=table_order):
        absent = _absent(summary, table)
        notes = ["Absent (state over this budget): " + ", ".join(absent) + "."] if absent else []
        sections.append(table_section(summary, records, table, table_title(table), notes))
    pivot = _budget_pivot(summary)
    header = ["# Capacity of the memories", "",
              "Error bits per query (wrong bits of all 128, an undecided 0.5 counts as wrong): mean ± half-width "
              "of the 95% t-interval over episodes (per-episode means; n/a: one episode). One table per task and "
              "budget; seeds pooled inside a cell."]
    if dropped:
        header.append(f"\n{dropped} record(s) repeat the episodes of another record of the same cell and seed "
                      "(e.g. N = 64 at 8256 floats in both capacity-n and capacity-budget) and were counted once.")
    return "\n".join(header) + "\n\n" + "\n".join(sections) + (f"\n{pivot}" if pivot else "")


def _budget_pivot(summary) -> str:
    """Model x budget at N = BUDGET_NUM_PATTERNS on the erasure task, where several budgets were run."""
    from tabulate import tabulate

    from membench.report import cell_text

    part = summary[(summary.flip == 0) & (summary.num_patterns == BUDGET_NUM_PATTERNS)]
    if part.empty or part["budget"].nunique() < 2:
        return ""
    sections = []
    for (dim, erased), group in part.groupby(["dim", "erased"], sort=True):
        budgets = sorted(group["budget"].unique())
        if len(budgets) < 2:
            continue
        model_of = dict(zip(group["row"], group["model"]))
        cells = []
        for row in row_order(list(model_of), model_of):
            line = [row]
            for budget in budgets:
                match = group[(group.row == row) & (group.budget == budget)]
                if len(match):
                    line.append(cell_text(match.iloc[0]))
                    continue
                line.append(missing_because(group[group.row == row].iloc[0], int(budget)))
            cells.append(line)
        headers = ["model \\ budget"] + [f"{b} ({b // dim} patterns)" for b in budgets]
        sections.append(f"## Summary: error at N = {BUDGET_NUM_PATTERNS} against the budget ({dim}-bit patterns, "
                        f"{erased} erased)\n\nThe same cells as the tables above, side by side; \"over budget\": the "
                        "model's state exceeds that budget, so it was not run; \"not run\": it would fit, but was "
                        "run at other budgets only; \"cannot be built\": its model refuses that budget for another "
                        "reason.\n\n"
                        + tabulate(cells, headers=headers, tablefmt="github") + "\n")
    return "\n".join(sections)


def capacity_figures(out_dir: Path) -> list[Path]:
    """The binary-task outputs (`binary_capacity_figures`) and the image-task ones (`image_capacity_figures`)
    of the records in `out_dir`, each where such records exist; return the paths written."""
    from membench.store import ResultsStore, warn

    from membench.capacity_images import image_capacity_figures, image_capacity_record

    records = ResultsStore(out_dir).records()
    binary, images = (any(r["task"]["kind"] == "binary" for r in records),
                      any(image_capacity_record(r) for r in records))  # not Figure 3's image runs
    if not binary and not images:
        raise MembenchError(f"no finished capacity runs in {out_dir}/runs; run a capacity-* suite first, e.g. "
                            f"`membench run --suite capacity-n --out {out_dir}`")
    paths = binary_capacity_figures(out_dir) if binary else []
    try:
        return paths + (image_capacity_figures(out_dir) if images else [])
    except DatasetMissing as exc:  # the image tables need the data (to say why a model is absent)
        fix = "point --data-dir (make: DATA=) at the data folder to redraw them"
        if not paths:
            raise MembenchError(f"{exc}; the image outputs (capacity_images.*, capacity_omniglot.*, "
                                f"capacity_cifar10.*) were not written: {fix}") from None
        warn(f"{exc}; the image outputs (capacity_images.*, capacity_omniglot.*, capacity_cifar10.*) are left as "
             f"they were: {fix}")
        return paths


def binary_capacity_figures(out_dir: Path) -> list[Path]:
    """Draw the capacity figures and write capacity.{md,csv} from the binary-task records in `out_dir`; return
    the paths.

    capacity_n: error against N, one panel per erasure task and budget run at several N;
    capacity_budget: error against the budget at N = 64 (erasure task);
    capacity_flip: error against N, one panel per flip rate (dashed: the flipped bits, what
    returning the query unchanged costs). One line per model with its 95% t-interval shaded.
    training_curves: the meta-learned rows' training, as `membench report` draws Table 1's.
    A figure whose data is absent is not drawn.
    """
    from membench.capacity_plots import budget_figure, flip_figure, n_figure, row_styles
    from membench.plots import pyplot, read_curves, training_curves
    from membench.store import write_text_atomic

    out_dir = Path(out_dir)
    summary, records, dropped = capacity_summary(out_dir)
    curves = read_curves(out_dir, images=False)  # every input read before any output is written
    styles = row_styles(sorted(summary["row"].unique()))
    plt = pyplot()
    erasure = summary[summary.flip == 0]
    paths = (n_figure(plt, erasure, styles, out_dir) + budget_figure(plt, erasure, styles, out_dir)
             + flip_figure(plt, summary[summary.flip > 0], styles, out_dir) + training_curves(out_dir, curves))

    markdown = capacity_markdown(summary, records, dropped)
    paths.append(write_text_atomic(out_dir / "capacity.md", markdown))
    columns = ["dim", "erased", "flip", "budget", "model", "row", "options", "preset", "num_patterns", "mean",
               "ci_low", "ci_high", "half_width", "num_queries", "seeds", "memory_floats", "wall_time_s",
               "versions", "commit", "command"]
    ordered = summary.assign(_order=[table_order(t) for t in summary["table"]]).sort_values(
        ["_order", "row", "num_patterns"], kind="stable")
    paths.append(write_text_atomic(out_dir / "capacity.csv", ordered[columns].to_csv(index=False, float_format="%.4f")))
    return paths
