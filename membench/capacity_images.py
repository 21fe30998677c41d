"""Capacity on images: error against N under the block, a pixel mask or noise (capacity-omniglot, capacity-cifar).

Suites (membench.suites, each an `ImageCapacitySuite`, one per data set): N = 16 ... 256 images
written at a budget of 64 whole images (65536 / 196608 float32), queries corrupted by the 16x16
block, a 50% pixel mask or Gaussian noise sigma 0.2 (see membench.suites for the choice); the
Hopfield rules (flat patterns only) and, on CIFAR-10, dense AM and SDM (binary patterns only)
refuse the task and are left out. The passthrough (query returned unchanged, 0 floats) runs
beside them, and so does mean_fill (each erased pixel set to its query's known mean per channel, 0 floats;
it refuses noise, where no pixel is known to be erased).

`image_capacity_figures(out_dir)` draws one figure per data set (capacity_omniglot,
capacity_cifar10: a panel per corruption) and writes capacity_images.md / .csv (one table per
data set, corruption and budget). Naming why a model is absent from a table rebuilds the task,
so it needs the data (`membench.datasets.data_dir()`, e.g. $MEMBENCH_DATA); without it the
reasons are left out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from membench.capacity import row_order, summary_and_records, table_section, task_of
from membench.capacity_plots import row_styles
from membench.errors import DatasetMissing, MembenchError
from membench.image_tasks import Cifar10Task, ImageTask, OmniglotTask
from membench.plots import legend_outside, log2_axis, plot_line, save_figure
from membench.run_spec import RunSpec
from membench.suites import IMAGE_CAPACITY_MODELS, SUITES, ImageCapacitySuite, declared_count

IMAGE_TASKS: dict[str, type[ImageTask]] = {cls.dataset_name: cls for cls in (OmniglotTask, Cifar10Task)}
DATASET_NAMES = {"omniglot": "Omniglot", "cifar10": "CIFAR-10"}
ERROR_LABELS = {"omniglot": "wrong pixels per image", "cifar10": "squared error per image"}
CORRUPTIONS = ("block", "mask", "noise")  # table and panel order


def _corruption(task: dict[str, Any]) -> tuple[str, float]:
    """(corruption name, its level: block side, masked fraction or noise sigma) of an image task config."""
    for name in ("mask", "noise"):
        if task.get(name):
            return name, float(task[name])
    return "block", float(task["block"])


def _image_table_order(table: str) -> tuple:
    task, budget = task_of(table)
    name, level = _corruption(task)
    return (list(IMAGE_TASKS).index(task["kind"]), task["image_size"], CORRUPTIONS.index(name), level, budget,
            task.get("data", ""))


def _image_title(table: str, panel: bool = False) -> str:
    """'<data set> <size>, <corruption>; budget ...' (a panel's title: corruption and budget on two lines)."""
    task, budget = task_of(table)
    name, level = _corruption(task)
    size = task["image_size"]
    pixels = size * size
    what = {"block": f"{int(level)}x{int(level)} block set to 0.5",
            "mask": f"{round(level * pixels)} of {pixels} pixel positions ({level:.0%}) set to 0.5",
            "noise": f"Gaussian noise sigma {level:g} on every value, clipped to [0, 1]"}[name]
    fit = f"budget {budget} float32 ({budget // (IMAGE_TASKS[task['kind']].channels * pixels)} whole images)"
    return f"{what}\n{fit}" if panel else f"{DATASET_NAMES[task['kind']]} {size}x{size}, {what}; {fit}"


def _image_left_out(part, table: str) -> list[str]:
    """'models: why' for each image capacity model the table lacks because it refuses the task or exceeds the
    budget (grouped by reason); none when the table holds none of the suite's models (only models of yours were
    run: the suite's were not left out); DatasetMissing when the task cannot be rebuilt here (data absent or
    different)."""
    from membench.registry import make_task

    task, budget = task_of(table)
    task = {**task, "num_patterns": int(part["num_patterns"].min())}
    ran = set(part["model"])
    missing = [model for model in IMAGE_CAPACITY_MODELS if model not in ran] if ran & set(IMAGE_CAPACITY_MODELS) else []
    if missing:
        try:
            make_task(task)
        except MembenchError as exc:
            raise DatasetMissing(f"the image capacity outputs name the models a table lacks by rebuilding its task, "
                                 f"and {task['kind']}'s cannot be rebuilt here ({exc})") from None
    reasons: dict[str, list[str]] = {}
    for model in missing:
        spec = RunSpec(suite="check", model=model, task=task, budget=budget, seed=0, queries=1)
        try:
            count = declared_count(spec)
        except MembenchError as exc:
            reasons.setdefault(str(exc), []).append(model)
            continue
        if count is None or count > budget:
            reasons.setdefault("over budget" if count is None else f"declares {count} float32", []).append(model)
    return [f"{', '.join(models)}: {why}" for why, models in reasons.items()]


def image_capacity_record(record: dict[str, Any]) -> bool:
    """Whether `record` is an image capacity suite's run (Figure 3's runs, of the same task kinds, are
    `membench figures`')."""
    return record["task"]["kind"] in IMAGE_TASKS and isinstance(SUITES.get(record.get("suite")), ImageCapacitySuite)


def image_capacity_summary(out_dir: Path):
    """(summary frame of the image-task records in out_dir, with dataset, corruption and level; records kept;
    duplicates dropped)."""
    from membench.store import ResultsStore

    records = [r for r in ResultsStore(out_dir).records() if image_capacity_record(r)]
    if not records:
        raise MembenchError(f"no finished image-task runs in {out_dir}/runs; run capacity-omniglot or "
                            f"capacity-cifar first, e.g. `membench run --suite capacity-omniglot --out {out_dir}`")
    summary, records, dropped = summary_and_records(records)
    tasks = [task_of(t)[0] for t in summary["table"]]
    summary["dataset"] = [t["kind"] for t in tasks]
    summary["corruption"] = [_corruption(t)[0] for t in tasks]
    summary["level"] = [_corruption(t)[1] for t in tasks]
    summary["image_size"] = [t["image_size"] for t in tasks]
    summary["data"] = [t.get("data", "") for t in tasks]
    return summary, records, dropped


def _which(records: list[dict[str, Any]]) -> str:
    """The memories the image capacity outputs show: the suites' non-learned ones, unless a learned one was run."""
    return "memories, meta-learned ones among them" if any(r["training"] for r in records) else "non-learned memories"


def image_capacity_markdown(summary, records: list[dict[str, Any]], dropped: int) -> str:
    sections = []
    for table in sorted(summary["table"].unique(), key=_image_table_order):
        part = summary[summary.table == table]
        kind = task_of(table)[0]["kind"]
        notes = [f"Error: {ERROR_LABELS[kind]}; data: {part['data'].iloc[0]}."]
        left_out = _image_left_out(part, table)
        if left_out:
            notes.append("Not run (refuse the task, or over budget):\n\n" + "\n".join(f"- {m}" for m in left_out))
        sections.append(table_section(summary, records, table, _image_title(table), notes))
    header = [f"# Capacity of the {_which(records)} on images", "",
              "Error per image, over all its pixels: Omniglot, wrong pixels of 32x32 after thresholding at 0.5 (an "
              "undecided 0.5 counts as wrong); CIFAR-10, squared error summed over 3x32x32 values in [0, 1]. Mean ± "
              "half-width of the 95% t-interval over episodes (per-episode means; n/a: one episode); one table per "
              "data set, corruption and budget; seeds pooled inside a cell. passthrough stores nothing and returns "
              "the query unchanged: what the corruption alone costs; mean_fill stores nothing and sets each erased "
              "pixel to its query's known mean per channel: what a read gets from the query alone."]
    if dropped:
        header.append(f"\n{dropped} record(s) repeat the episodes of another record of the same cell and seed "
                      "and were counted once.")
    return "\n".join(header) + "\n\n" + "\n".join(sections)


def _fit_below_passthrough(ax, part) -> None:
    """Where the passthrough's error is over twice every other row's (Omniglot's 256 or 512 wrong pixels
    against at most about 80), fit the error axis to the others and write the passthrough's value at the top."""
    floor = part[part.model == "passthrough"]
    others = part[part.model != "passthrough"]
    if floor.empty or others.empty:
        return
    top = others["ci_high"].fillna(others["mean"]).max()
    if 0 < top and 2 * top < floor["mean"].max():
        ax.set_ylim(0, 1.15 * top)
        ax.text(0.98, 0.98, f"above the axis: passthrough, {floor['mean'].max():.0f}", transform=ax.transAxes,
                ha="right", va="top", fontsize=7, color="grey")


def image_capacity_figures(out_dir: Path) -> list[Path]:
    """Draw capacity_<data set>.{png,pdf} and write capacity_images.{md,csv} from the image-task records in
    `out_dir`; return the paths.

    One figure per data set, one panel per corruption (and budget): error against N, one line per model with
    its 95% t-interval shaded (mean_fill's too); dashed black: the passthrough (the query returned unchanged),
    where it was run (above the axis, its value written, where it is over twice every other line); dotted
    vertical: the number of whole images the budget holds.
    """
    from membench.plots import pyplot
    from membench.store import write_text_atomic

    out_dir = Path(out_dir)
    summary, records, dropped = image_capacity_summary(out_dir)
    markdown = image_capacity_markdown(summary, records, dropped)  # first: it may need the data (DatasetMissing)
    styles = row_styles(sorted(summary["row"].unique()))
    plt = pyplot()
    paths: list[Path] = []
    for kind in [k for k in IMAGE_TASKS if k in set(summary["dataset"])]:
        tables = sorted(summary[summary.dataset == kind]["table"].unique(), key=_image_table_order)
        fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.4), squeeze=False)
        for ax, table in zip(axes[0], tables):
            part = summary[summary.table == table]
            for row in row_order(list(part["row"].unique()), dict(zip(part["row"], part["model"]))):
                floor = part[part.row == row]["model"].iloc[0] == "passthrough"
                style = {"color": "black", "linestyle": "--", "marker": ""} if floor else styles[row]
                plot_line(ax, part[part.row == row], "num_patterns", "passthrough (query unchanged)" if floor else row,
                      style)
            task, budget = task_of(table)
            images = budget // (IMAGE_TASKS[kind].channels * task["image_size"] ** 2)
            ax.axvline(images, color="grey", linestyle=":", linewidth=1)
            ax.text(images, 0.5, f"{images} images fit whole ", transform=ax.get_xaxis_transform(), fontsize=7,
                    color="grey", rotation=90, ha="right", va="center")
            log2_axis(ax, sorted(part["num_patterns"].unique()))
            ax.set(xlabel="N (images written)", ylabel=ERROR_LABELS[kind], title=_image_title(table, panel=True))
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
            _fit_below_passthrough(ax, part)
        legend_outside(axes[0])
        fig.suptitle(f"{DATASET_NAMES[kind]}: error against N, "
                     f"{_which([r for r in records if r['task']['kind'] == kind])}", fontsize=10)
        fig.tight_layout()
        paths += save_figure(fig, out_dir, f"capacity_{kind}")
        plt.close(fig)

    paths.append(write_text_atomic(out_dir / "capacity_images.md", markdown))
    columns = ["dataset", "corruption", "level", "image_size", "budget", "model", "row", "options", "preset",
               "num_patterns", "mean", "ci_low", "ci_high", "half_width", "num_queries", "seeds", "memory_floats",
               "wall_time_s", "versions", "commit", "command", "data"]
    ordered = summary.assign(_order=[_image_table_order(t) for t in summary["table"]]).sort_values(
        ["_order", "row", "num_patterns"], kind="stable")
    paths.append(write_text_atomic(out_dir / "capacity_images.csv",
                                   ordered[columns].to_csv(index=False, float_format="%.4f")))
    return paths
