"""Figure 3's acceptance (issue 15) read off `figure3.summarise`'s points: fig3_acceptance.md.

For each data set and each trained preset but the quick one (a CPU smoke test), on its points without extra
options, at the paper's task (PAPER_POINT_TASK; points at another N, image or block size are not read):
- EBMM_conv, EBMM_FC and MemNet each have at least MIN_SIZES memory sizes, every point from at least
  MIN_BATCHES test batches (seeds pooled) and every size trained under one configuration (a curve whose sizes
  come from different versions of its preset is no curve);
- each of those curves falls with memory: its largest size's median at most FALL x its smallest size's;
- every EBMM point is at most PAPER_FACTOR x the paper's curve at its memory (the paper's points
  interpolated linearly in log-memory, a point within MATCH_TOLERANCE beyond its ends taking the end's value;
  n/a only where the paper has no such curve; a point farther outside fails: nothing to compare it with),
- and at most PASSTHROUGH_FRACTION of passthrough's error (the query returned unchanged; no passthrough point
  on the same data fails);
- on CIFAR, EBMM_conv below MemNet at the smallest memory both curves reach (both interpolated there).
A check is PASS, FAIL or n/a; each preset's part opens with a bold line saying whether all pass. Beyond the
issue, and not counted: every learned point against mean fill (0 floats: the erased pixels set to the query's known mean), which a
point must beat to recall anything the query alone does not give. Nothing here changes a number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

CURVES = ("EBMM_conv", "EBMM_FC", "MemNet")
MIN_SIZES = 4
MIN_BATCHES = 1000  # test batches of 64 images per point (App. D)
MATCH_TOLERANCE = 0.05  # memory sizes at most 5% apart count as the same (the paper's were read off its plot)
FALL = 0.75
PAPER_FACTOR = 2.0
PASSTHROUGH_FRACTION = 0.5
PAPER_DATASET = {"omniglot": "omniglot", "cifar10": "cifar"}  # our task kind -> paper_fig3.csv's data set
PAPER_POINT_TASK = {"num_patterns": 64, "image_size": 32, "block": 16}  # the paper's task: its points apply there


def interpolated(memory_k: pd.Series, error: pd.Series, at: float, tolerance: float = 0.0) -> float:
    """The curve through (memory_k, error) at memory `at`, linear in log-memory; within `tolerance` (a fraction)
    beyond an end, that end's value; NaN farther outside."""
    order = np.argsort(memory_k.to_numpy())
    xs, ys = np.log(memory_k.to_numpy()[order]), error.to_numpy()[order]
    slack = np.log1p(tolerance)
    if not len(xs) or not xs[0] - slack <= np.log(at) <= xs[-1] + slack:
        return float("nan")
    return float(np.interp(np.log(at), xs, ys))


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def checked_presets(summary: pd.DataFrame) -> list[str]:
    """The presets whose points the acceptance reads: every trained one but quick (a CPU smoke test)."""
    if summary.empty:
        return []
    return sorted(p for p in summary[summary["trained"].astype(bool)]["preset"].unique()
                  if p != "quick" and len(read_points(summary, p)))


def read_points(summary: pd.DataFrame, preset: str = "gpu") -> pd.DataFrame:
    """The points the acceptance reads: trained with `preset` to its end (not a paused checkpoint's, `--no-train`),
    at the curve's own options (no variant)."""
    if summary.empty:
        return summary
    finished = summary["paused"].fillna("") == "" if "paused" in summary else True
    return summary[summary["trained"].astype(bool) & finished & (summary["preset"] == preset)
                   & (summary["variant"] == "")]


def _on_one_data(frame: pd.DataFrame, preset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A data set's points at the paper's task and its learned ones (`read_points`), both kept to the data most
    learned points used: a subset's and the full set's do not mix."""
    if len(frame):
        frame = frame[np.logical_and.reduce([frame[name] == value for name, value in PAPER_POINT_TASK.items()])]
    learned = read_points(frame, preset)
    if len(learned):
        data = learned["data"].mode().iloc[0]
        frame, learned = frame[frame["data"] == data], learned[learned["data"] == data]
    return frame, learned


def checks(summary: pd.DataFrame, reference: pd.DataFrame | None, preset: str = "gpu") -> list[dict[str, str]]:
    """The acceptance's checks, one row each: data set, check, what was measured, verdict."""
    rows: list[dict[str, str]] = []

    def add(dataset: str, check: str, measured: str, passed: bool | None) -> None:
        rows.append({"data set": dataset, "check": check, "measured": measured, "verdict": _verdict(passed)})

    if summary.empty:
        summary = pd.DataFrame(columns=["dataset", "curve", "variant", "preset", "trained", "paused", "data", "memory_k",
                                        "median", "batches", "train_config"])
    for dataset in PAPER_DATASET:
        frame, learned = _on_one_data(summary[summary["dataset"] == dataset], preset)
        through = frame[frame["curve"] == "passthrough"]["median"]
        passthrough = float(through.iloc[0]) if len(through) else float("nan")
        curves = {}
        for curve in CURVES:
            points = learned[learned["curve"] == curve].sort_values("memory_k", kind="stable")
            curves[curve] = points
            sizes = points["memory_k"].nunique()
            add(dataset, f"{curve}: at least {MIN_SIZES} memory sizes ({preset})", f"{sizes}", sizes >= MIN_SIZES)
            if len(points):
                fewest = int(points["batches"].min())
                add(dataset, f"{curve}: every point from at least {MIN_BATCHES} test batches", f"{fewest} at the fewest",
                    fewest >= MIN_BATCHES)
                configs = len({c for joined in points["train_config"] for c in joined.split(" | ")})  # (seeds pooled)
                add(dataset, f"{curve}: every size trained under one configuration",
                    f"{configs} configuration{'s' if configs > 1 else ''}", configs == 1)
            if sizes < len(points):
                add(dataset, f"{curve}: one point per memory size", f"{len(points)} points at {sizes} sizes", False)
            elif len(points) >= 2:
                small, large = points.iloc[0], points.iloc[-1]
                add(dataset, f"{curve}: error at the largest size at most {FALL} x the smallest's",
                    f"{large['median']:.2f} at {large['memory_k']:.2f}k, {small['median']:.2f} at "
                    f"{small['memory_k']:.2f}k ({large['median'] / small['median']:.2f} x)",
                    large["median"] <= FALL * small["median"])
            if not curve.startswith("EBMM"):
                continue
            paper = (reference[(reference["dataset"] == PAPER_DATASET[dataset]) & (reference["model"] == curve)]
                     if reference is not None else pd.DataFrame())
            for point in points.itertuples():
                at = f"{curve} at {point.memory_k:.2f}k"
                check = f"{at}: at most {PAPER_FACTOR:g} x the paper's"
                if reference is None:
                    add(dataset, check, "no table of the paper's points (results/reference/paper_fig3.csv)", False)
                elif not len(paper):
                    add(dataset, check, "the paper has no such curve", None)
                else:
                    theirs = interpolated(paper["memory_k"], paper["error"], point.memory_k, MATCH_TOLERANCE)
                    add(dataset, check, f"outside the paper's curve ({paper['memory_k'].min():.2f}k to "
                        f"{paper['memory_k'].max():.2f}k): nothing to compare it with" if np.isnan(theirs) else
                        f"{point.median:.2f} against {theirs:.2f} ({point.median / theirs:.2f} x)",
                        not np.isnan(theirs) and point.median <= PAPER_FACTOR * theirs)
                add(dataset, f"{at}: at most {PASSTHROUGH_FRACTION:g} x passthrough's error",
                    "no passthrough point on this data and task" if np.isnan(passthrough)
                    else f"{point.median:.2f} against {passthrough:.2f}",
                    not np.isnan(passthrough) and point.median <= PASSTHROUGH_FRACTION * passthrough)
        if dataset == "cifar10":
            conv, memnet = curves["EBMM_conv"], curves["MemNet"]
            if len(conv) and len(memnet):
                at = max(conv["memory_k"].min(), memnet["memory_k"].min())
                ours = interpolated(conv["memory_k"], conv["median"], at)
                theirs = interpolated(memnet["memory_k"], memnet["median"], at)
                known = not (np.isnan(ours) or np.isnan(theirs))
                add(dataset, "EBMM_conv below MemNet at the smallest memory both reach",
                    f"{ours:.2f} against {theirs:.2f} at {at:.2f}k" if known
                    else f"the curves do not both reach {at:.2f}k: nothing to compare", known and ours < theirs)
            else:
                add(dataset, "EBMM_conv below MemNet at the smallest memory both reach", "a curve is missing", False)
    return rows


def against_mean_fill(summary: pd.DataFrame, preset: str = "gpu") -> list[dict[str, str]]:
    """Ours, not the issue's: each learned point `read_points` reads (every curve) against mean fill's median
    on its data set, one row each: data set, point, what was measured, whether it lies below."""
    if summary.empty:
        return []
    rows = []
    for dataset in PAPER_DATASET:
        frame, learned = _on_one_data(summary[summary["dataset"] == dataset], preset)
        fill = frame[frame["curve"] == "mean_fill"]["median"]
        for point in learned.sort_values(["curve", "memory_k"]).itertuples():
            measured, below = "no mean_fill point", "n/a"
            if len(fill):
                measured = f"{point.median:.2f} against {fill.iloc[0]:.2f} ({point.median / fill.iloc[0]:.2f} x)"
                below = "yes" if point.median < fill.iloc[0] else "no"
            rows.append({"data set": dataset, "point": f"{point.curve} at {point.memory_k:.2f}k", "measured": measured,
                         "below mean fill": below})
    return rows


def acceptance_markdown(summary: pd.DataFrame, reference: pd.DataFrame | None, preset: str = "gpu") -> str:
    """fig3_acceptance.md's part for one preset: whether every check passes, every check in a table; then, not
    counted, every learned point against mean fill."""
    rows = checks(summary, reference, preset)
    verdicts = [row["verdict"] for row in rows]
    counted, failed = len(rows) - verdicts.count("n/a"), verdicts.count("FAIL")
    verdict = (f"**Not met: {failed} of {counted} checks fail**" if failed else f"**Met: all {counted} checks pass**")
    return (f"# Figure 3: acceptance (issue 15), {preset} preset\n\n"
            f"{verdict} ({verdicts.count('n/a')} not applicable: the paper has no such curve). Written by "
            f"`membench figures` from this folder's records; the rules are in `membench/fig3_acceptance.py`. On "
            f"Omniglot passthrough leaves the block at 0.5, which counts as wrong at every pixel, so its half is a "
            f"weak bar there.\n\n"
            + _table(rows) + "\n" + _mean_fill_section(against_mean_fill(summary, preset)))


def _mean_fill_section(rows: list[dict[str, str]]) -> str:
    """The page's part beyond the issue: the learned points against mean fill (empty without points)."""
    if not rows:
        return ""
    return ("\n## Beyond the issue: does a point recall anything? (not counted above)\n\nMean fill stores nothing and "
            "sets each erased pixel to its query's known mean: a point at or above it recalls nothing the query "
            "alone does not give.\n\n" + _table(rows) + "\n")


def _table(rows: list[dict[str, str]]) -> str:
    """Rows of one kind (dicts with the same keys) as a GitHub table, their keys the header."""
    return tabulate([list(row.values()) for row in rows], headers=list(rows[0]) if rows else [], tablefmt="github")
