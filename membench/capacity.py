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
the image-task records, the outputs of `membench.capacity_images.image_capacity_figures`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from membench.errors import MembenchError
from membench.plots import log2_axis, plot_line, save_figure
from membench.run_spec import RunSpec
from membench.suites import BUDGET_NUM_PATTERNS, CAPACITY_MODELS, declared_count


# ---------------------------------------------------------------- figures and tables from records

def task_of(table: str) -> tuple[dict[str, Any], int]:
    """A table's key (`report.task_key`) -> (task without N, budget)."""
    key = json.loads(table)
    return key["task"], key["budget"]


def _title(table: str) -> str:
    task, budget = task_of(table)
    dim = task.get("dim", 128)
    if task.get("flip"):
        what = f"{round(task['flip'] * dim)} of {dim} bits flipped (flip {task['flip']:g}), none erased"
    else:
        what = f"{task.get('erased')} of {dim} bits erased"
    return f"{dim}-bit patterns, {what}; budget {budget} float32 ({budget // dim} whole patterns)"


def _table_order(table: str) -> tuple:
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
        count = _count_at(group.iloc[0], task, budget, n)
        if count is not False and (count is None or count > budget):
            notes.append(f"{row} ({'over budget' if count is None else f'{count} floats'})")
    return notes


def _count_at(record, task: dict[str, Any], budget: int, num_patterns: int) -> int | None | bool:
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
    from membench.report import distinct, summarise

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

    from membench.report import cell_text, commits_text, seed_sets, span, task_key

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
    for table in sorted(summary["table"].unique(), key=_table_order):
        absent = _absent(summary, table)
        notes = ["Absent (state over this budget): " + ", ".join(absent) + "."] if absent else []
        sections.append(table_section(summary, records, table, _title(table), notes))
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
                record = group[group.row == row].iloc[0]
                count = _count_at(record, task_of(record["table"])[0], int(budget), BUDGET_NUM_PATTERNS)
                line.append("cannot be built" if count is False else "over budget" if count is None or count > budget
                            else "not run")
            cells.append(line)
        headers = ["model \\ budget"] + [f"{b} ({b // dim} patterns)" for b in budgets]
        sections.append(f"## Summary: error at N = {BUDGET_NUM_PATTERNS} against the budget ({dim}-bit patterns, "
                        f"{erased} erased)\n\nThe same cells as the tables above, side by side; \"over budget\": the "
                        "model's state exceeds that budget, so it was not run; \"not run\": it would fit, but was "
                        "run at other budgets only; \"cannot be built\": its model refuses that budget for another "
                        "reason.\n\n"
                        + tabulate(cells, headers=headers, tablefmt="github") + "\n")
    return "\n".join(sections)


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")


def row_styles(rows: list[str]) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker per row, fixed by the model order (so every figure agrees);
    styles and markers vary too, so that coinciding lines stay visible."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    order = list(CAPACITY_MODELS) + sorted(r for r in rows if r not in CAPACITY_MODELS)
    return {row: {"color": palette(order.index(row) % 10), "linestyle": LINE_STYLES[order.index(row) % 4],
                  "marker": MARKERS[order.index(row) % len(MARKERS)]} for row in rows}


def capacity_figures(out_dir: Path) -> list[Path]:
    """The binary-task outputs (`binary_capacity_figures`) and the image-task ones (`image_capacity_figures`)
    of the records in `out_dir`, each where such records exist; return the paths written."""
    from membench.store import ResultsStore

    from membench.capacity_images import IMAGE_TASKS, image_capacity_figures

    kinds = {r["task"]["kind"] for r in ResultsStore(out_dir).records()}
    if not kinds & ({"binary"} | set(IMAGE_TASKS)):
        raise MembenchError(f"no finished capacity runs in {out_dir}/runs; run a capacity-* suite first, e.g. "
                            f"`membench run --suite capacity-n --out {out_dir}`")
    return ((binary_capacity_figures(out_dir) if "binary" in kinds else [])
            + (image_capacity_figures(out_dir) if kinds & set(IMAGE_TASKS) else []))


def _n_figure(plt, erasure, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_n: error against N, one panel per erasure task and budget run at several N (none: no figure)."""
    n_tables = sorted((t for t, g in erasure.groupby("table") if g["num_patterns"].nunique() > 1), key=_table_order)
    if not n_tables:
        return []
    fig, axes = plt.subplots(1, len(n_tables), figsize=(6.4 * len(n_tables), 4.6), squeeze=False)
    for ax, table in zip(axes[0], n_tables):
        part = erasure[erasure.table == table]
        for row in row_order(list(part["row"].unique()), dict(zip(part["row"], part["model"]))):
            plot_line(ax, part[part.row == row], "num_patterns", row, styles[row])
        task, budget = task_of(table)
        slots = budget // task.get("dim", 128)
        ax.axvline(slots, color="grey", linestyle=":", linewidth=1)
        ax.text(slots, 0.97, f" {slots} patterns fit whole", transform=ax.get_xaxis_transform(), fontsize=7,
                color="grey", va="top")
        log2_axis(ax, sorted(part["num_patterns"].unique()))
        ax.set(xlabel="N (patterns written)", ylabel="error bits per query", title=_title(table))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    saved = save_figure(fig, out_dir, "capacity_n")
    plt.close(fig)
    return saved


def _budget_figure(plt, erasure, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_budget: error against the budget at N = BUDGET_NUM_PATTERNS (erasure task), a note naming the
    rows absent at some budget and why (no model run at several budgets: no figure)."""
    at_n = erasure[erasure.num_patterns == BUDGET_NUM_PATTERNS]
    budget_groups = [(key, g) for key, g in at_n.groupby(["dim", "erased"], sort=True) if g["budget"].nunique() > 1]
    if not budget_groups:
        return []
    fig, axes = plt.subplots(1, len(budget_groups), figsize=(7.2 * len(budget_groups), 4.6), squeeze=False)
    notes = []
    for ax, ((dim, erased), group) in zip(axes[0], budget_groups):
        budgets = sorted(group["budget"].unique())
        over, not_run = [], []
        for row in row_order(list(group["row"].unique()), dict(zip(group["row"], group["model"]))):
            mine = group[group.row == row]
            plot_line(ax, mine, "budget", row, styles[row])
            missing = [int(b) for b in budgets if b not in set(mine["budget"])]
            counts = [_count_at(mine.iloc[0], task_of(mine.iloc[0]["table"])[0], b, BUDGET_NUM_PATTERNS)
                      for b in missing]
            if any(c is None or (c is not False and c > b) for c, b in zip(counts, missing)):
                over.append(row)
            elif missing:
                not_run.append(row)
        log2_axis(ax, budgets)
        ax.set_xticklabels([f"{b}\n({b // dim} patterns)" for b in budgets], fontsize=8)
        ax.set(xlabel="budget (float32 values)", ylabel="error bits per query",
               title=f"N = {BUDGET_NUM_PATTERNS}, {dim}-bit patterns, {erased} bits erased")
        ax.grid(alpha=0.3)
        notes += [f"{what}: {', '.join(rows)}" for what, rows in
                 (("absent where their state exceeds the budget", over), ("run at other budgets only", not_run))
                 if rows]
    axes[0][0].legend(fontsize=7)
    if notes:  # below the axes, so that a long list does not squeeze them
        fig.text(0.5, 0.005, "; ".join(notes), ha="center", fontsize=7, color="grey", wrap=True)
    fig.tight_layout(rect=(0, 0.08 if notes else 0, 1, 1))
    saved = save_figure(fig, out_dir, "capacity_budget")
    plt.close(fig)
    return saved


def _flip_figure(plt, flipped, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_flip: error against N, one panel per flip rate; dashed, the flipped bits (what returning the
    query unchanged costs), and the rows exactly on it named (no flip task run: no figure)."""
    if flipped.empty:
        return []
    tables = sorted(flipped["table"].unique(), key=_table_order)
    fig, axes = plt.subplots(1, len(tables), figsize=(4.8 * len(tables), 4.4), squeeze=False, sharey=True)
    unchanged: set[str] | None = None  # rows whose error is exactly the flipped bits everywhere
    for ax, table in zip(axes[0], tables):
        part = flipped[flipped.table == table]
        task, budget = task_of(table)
        for row in row_order(list(part["row"].unique()), dict(zip(part["row"], part["model"]))):
            plot_line(ax, part[part.row == row], "num_patterns", row, styles[row])
        bits = round(task["flip"] * task.get("dim", 128))
        ax.axhline(bits, color="grey", linestyle="--", linewidth=1)
        on_line = {row for row, g in part.groupby("row")  # every query exactly the flips (one episode: mean)
                   if all((g[bound].fillna(g["mean"]) == bits).all() for bound in ("ci_low", "ci_high"))}
        unchanged = on_line if unchanged is None else unchanged & on_line
        log2_axis(ax, sorted(part["num_patterns"].unique()))
        ax.set(xlabel="N (patterns written)", title=f"flip {task['flip']:g}: {bits} of {task.get('dim', 128)} "
                                                    f"bits flipped; budget {budget}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("error bits per query")
    axes[0][0].legend(fontsize=7)
    note = "Dashed: the error of returning the query unchanged (the flipped bits)."
    if unchanged:
        note += (" Every query exactly on it, at every N and rate: "
                 + ", ".join(row_order(sorted(unchanged), {r: r for r in unchanged}))
                 + " (a flipped query has no 0.5 entry, so a read that keeps known bits clamped returns it as is).")
    fig.text(0.5, 0.005, note, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    saved = save_figure(fig, out_dir, "capacity_flip")
    plt.close(fig)
    return saved


def binary_capacity_figures(out_dir: Path) -> list[Path]:
    """Draw the capacity figures and write capacity.{md,csv} from the binary-task records in `out_dir`; return
    the paths.

    capacity_n: error against N, one panel per erasure task and budget run at several N;
    capacity_budget: error against the budget at N = 64 (erasure task);
    capacity_flip: error against N, one panel per flip rate (dashed: the flipped bits, what
    returning the query unchanged costs). One line per model with its 95% t-interval shaded.
    A figure whose data is absent is not drawn.
    """
    from membench.plots import pyplot
    from membench.store import write_text_atomic

    out_dir = Path(out_dir)
    summary, records, dropped = capacity_summary(out_dir)
    styles = row_styles(sorted(summary["row"].unique()))
    plt = pyplot()
    erasure = summary[summary.flip == 0]
    paths = (_n_figure(plt, erasure, styles, out_dir) + _budget_figure(plt, erasure, styles, out_dir)
             + _flip_figure(plt, summary[summary.flip > 0], styles, out_dir))

    markdown = capacity_markdown(summary, records, dropped)
    paths.append(write_text_atomic(out_dir / "capacity.md", markdown))
    columns = ["dim", "erased", "flip", "budget", "model", "row", "options", "preset", "num_patterns", "mean",
               "ci_low", "ci_high", "half_width", "num_queries", "seeds", "memory_floats", "wall_time_s",
               "versions", "commit", "command"]
    ordered = summary.assign(_order=[_table_order(t) for t in summary["table"]]).sort_values(
        ["_order", "row", "num_patterns"], kind="stable")
    paths.append(write_text_atomic(out_dir / "capacity.csv", ordered[columns].to_csv(index=False, float_format="%.4f")))
    return paths
