"""The binary capacity suites' figures, drawn by `membench.capacity.binary_capacity_figures` from its summary
(one row per model, task, budget and N; see membench.capacity):

- capacity_n: error against N, one panel per erasure task and budget run at several N;
- capacity_budget: error against the budget at N = 64 (erasure task), the rows absent at some budget named;
- capacity_flip: error against N, one panel per flip rate, dashed at the flipped bits.

`row_styles` fixes each model's colour, line style and marker, so every capacity figure (the image
suites' too) draws a model alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from membench.capacity import missing_because, row_order, table_order, table_title, task_of
from membench.plots import legend_outside, log2_axis, plot_line, save_figure
from membench.suites import BUDGET_NUM_PATTERNS, CAPACITY_MODELS, LEARNED_MODELS

LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")
# tab10, then eight more of other hues: the eighteen models of the suites (STYLE_ORDER) each a colour of its own
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#800000", "#000075", "#469990", "#f032e6", "#e6a800", "#9a6324", "#808000")
STYLE_ORDER = CAPACITY_MODELS + LEARNED_MODELS + ("passthrough", "mean_fill")  # every capacity suite's models


def row_styles(rows: list[str]) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker per row, fixed by the model order (so every figure agrees); a colour each
    up to len(COLOURS) rows, and styles and markers vary too, so that coinciding lines stay visible."""
    order = list(STYLE_ORDER) + sorted(r for r in rows if r not in STYLE_ORDER)
    return {row: {"color": COLOURS[order.index(row) % len(COLOURS)], "linestyle": LINE_STYLES[order.index(row) % 4],
                  "marker": MARKERS[order.index(row) % len(MARKERS)]} for row in rows}


def n_figure(plt, erasure, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_n: error against N, one panel per erasure task and budget run at several N (none: no figure)."""
    n_tables = sorted((t for t, g in erasure.groupby("table") if g["num_patterns"].nunique() > 1), key=table_order)
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
        ax.set(xlabel="N (patterns written)", ylabel="error bits per query", title=table_title(table))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    legend_outside(axes[0])
    fig.tight_layout()
    saved = save_figure(fig, out_dir, "capacity_n")
    plt.close(fig)
    return saved


def budget_figure(plt, erasure, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_budget: error against the budget at N = BUDGET_NUM_PATTERNS (erasure task), a note naming the
    rows absent at some budget and why, with those budgets; a row run at one budget only (the learned ones, at
    Table 1's) is a lone marker, named as such, the lone markers of a budget spread within 0.15 of an octave
    of it so that none hides another (no model run at several budgets: no figure)."""
    at_n = erasure[erasure.num_patterns == BUDGET_NUM_PATTERNS]
    budget_groups = [(key, g) for key, g in at_n.groupby(["dim", "erased"], sort=True) if g["budget"].nunique() > 1]
    if not budget_groups:
        return []
    fig, axes = plt.subplots(1, len(budget_groups), figsize=(7.2 * len(budget_groups), 4.6), squeeze=False)
    notes = []
    for ax, ((dim, erased), group) in zip(axes[0], budget_groups):
        budgets = sorted(group["budget"].unique())
        rows = row_order(list(group["row"].unique()), dict(zip(group["row"], group["model"])))
        lone = [row for row in rows if (group.row == row).sum() == 1]  # markers side by side, none hidden
        for row in rows:
            mine = group[group.row == row]
            if row in lone:  # within 0.15 of an octave of its budget
                mine = mine.assign(budget=mine["budget"] * 2 ** (0.3 * (lone.index(row) / max(len(lone) - 1, 1) - 0.5)))
            plot_line(ax, mine, "budget", row, styles[row])
        log2_axis(ax, budgets)
        ax.set_xticklabels([f"{b}\n({b // dim} patterns)" for b in budgets], fontsize=8)
        ax.set(xlabel="budget (float32 values)", ylabel="error bits per query",
               title=f"N = {BUDGET_NUM_PATTERNS}, {dim}-bit patterns, {erased} bits erased")
        ax.grid(alpha=0.3)
        notes += budget_notes(group)
    legend_outside(axes[0])
    if notes:  # below the axes, so that a long list does not squeeze them
        fig.text(0.5, 0.005, "; ".join(notes), ha="center", fontsize=7, color="grey", wrap=True)
    fig.tight_layout(rect=(0, 0.08 if notes else 0, 1, 1))
    saved = save_figure(fig, out_dir, "capacity_budget")
    plt.close(fig)
    return saved


def budget_notes(group) -> list[str]:
    """The budget figure's notes on one panel's rows (`group`: the summary at N = BUDGET_NUM_PATTERNS of one
    task): those absent at some budget, by reason (`missing_because`), each with those budgets; those run at one
    budget only (a lone marker)."""
    budgets = sorted(int(b) for b in group["budget"].unique())
    reasons: dict[str, list[str]] = {}
    for row in row_order(list(group["row"].unique()), dict(zip(group["row"], group["model"]))):
        mine = group[group.row == row]
        lone = len(mine) == 1  # its "not run" budgets are said by "run at ... only"
        if lone:
            reasons.setdefault(f"run at {int(mine['budget'].iloc[0])} only (a marker, spread sideways)", []).append(row)
        missing = [b for b in budgets if b not in set(mine["budget"])]
        for why in ("over budget", "cannot be built") if lone else ("over budget", "not run", "cannot be built"):
            at = [b for b in missing if missing_because(mine.iloc[0], b) == why]
            if at:
                reasons.setdefault(why, []).append(f"{row} ({', '.join(map(str, at))})")
    return [f"{why}: {', '.join(rows)}" for why, rows in reasons.items()]


def flip_figure(plt, flipped, styles: dict[str, Any], out_dir: Path) -> list[Path]:
    """capacity_flip: error against N, one panel per flip rate; dashed, the flipped bits (what returning the
    query unchanged costs), and the rows exactly on it named (no flip task run: no figure)."""
    if flipped.empty:
        return []
    tables = sorted(flipped["table"].unique(), key=table_order)
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
    legend_outside(axes[0])
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
