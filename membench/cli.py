"""Command line: `membench list | run | report | figures | capacity | readme | download | checkpoints |
throughput`, and the commands of membench.cli_sessions (`session | pack | unpack | ship | set-aside`), all on the
one `membench` group."""
from __future__ import annotations

import contextlib
import shlex
from pathlib import Path

import click

from membench.cli_common import (DATA_DIR_OPTION, DEFAULT_OUT, MAX_SEED, MAX_SIZE, PROGRESS_OPTION, MembenchGroup, PathArg,
                                 Seconds, friendly_errors, int_list, parse_options, suite_runs)
from membench.cli_sessions import COMMANDS
from membench.errors import MembenchError
from membench.interface import PRECISIONS
from membench.store import no_folder_in_the_way, writable_folder


@click.group(cls=MembenchGroup)
@click.version_option(package_name="membench")
def main() -> None:
    """Benchmark associative memories under equal float32 budgets (EBMM paper, Table 1 and Figure 3)."""


@main.command("list")
@click.option("--model", help="Show this model's options instead (name or module:Class): a learned model's preset "
                               "values on Table 1's task, an untrained one's constructor defaults (and, when its "
                               "from_spec sizes it, the values that sets at Table 1's budget).")
@click.option("--suite", help="Show the runs `membench run --suite SUITE --seeds 0` makes instead: each model's "
                               "task, N, budget (a Figure 3 point's memory size) and options, under --preset.")
@click.option("--preset", default="quick", show_default=True, help="With --suite: the preset whose runs.")
@DATA_DIR_OPTION
@friendly_errors
def list_command(model, suite, preset, data_dir) -> None:
    """List registered models (learned or not) and suites, or one model's options, or one suite's runs."""
    from membench.listing import model_options, suite_table
    from membench.registry import available_models, errors_of_user_model, resolve_model
    from membench.suites import SUITES

    if model and suite:
        raise MembenchError("give --model or --suite, not both")
    if preset != "quick" and not suite:
        raise MembenchError(f"--preset {preset} chooses the runs --suite lists; give --suite SUITE with it (--model "
                            "lists a model's options under every preset)")
    if model:
        cls = resolve_model(model)
        with errors_of_user_model(model, "its options cannot be listed"):
            click.echo(model_options(model, cls))
        return
    if suite:
        from membench.datasets import set_data_dir

        set_data_dir(data_dir)
        click.echo(suite_table(suite, preset))
        return
    click.echo("models (learned: meta-trained under --preset; `membench list --model NAME` for its options):")
    for name, path in sorted(available_models().items()):
        try:
            kind = "learned  " if resolve_model(name).trainable else "untrained"
        except MembenchError as exc:  # a plugin's model that does not import: named, the list goes on
            kind = f"cannot import ({exc})"
        click.echo(f"  {name:28s} {kind}  {path}")
    click.echo("suites:")
    for name, suite in SUITES.items():
        click.echo(f"  {name:28s} {suite.description}")


@main.command()
@click.option("--suite", default="table1", show_default=True, help="Suite to run (see `membench list`).")
@click.option("--model", "models", multiple=True, help="Model name or module:Class; repeatable. Default: the suite's models.")
@click.option("--num-patterns", callback=int_list(1, MAX_SIZE),
              help="Comma-separated N values (>= 1). Default: the suite's.")
@click.option("--seeds", default="0", callback=int_list(0, MAX_SEED), show_default=True,
              help=f"Comma-separated seeds in [0, {MAX_SEED}].")
@click.option("--queries", type=click.IntRange(1),
              help="Minimum queries per run. Default: the suite's (1000 for table1, 64000 = 1000 batches for fig3-*).")
@click.option("--preset", default="quick", show_default=True,
              help="Training preset of meta-learned models; the built-in ones have quick (CPU), gpu (one GPU, CUDA "
                   "graphs) and paper (the paper's scale); a model of yours may name others.")
@click.option("--budget", type=click.IntRange(1),
              help="Float32 budget. Default: the suite's (8256 for table1). A Figure 3 suite: run only its points of "
                   "this memory size (models of yours alone: a point of theirs at any size).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Output directory (records in OUT/runs).")
@click.option("--checkpoint-dir", type=PathArg(file_okay=False, path_type=Path),
              help="Where trained checkpoints are cached. Default: $MEMBENCH_CACHE/checkpoints or "
                   "~/.cache/membench/checkpoints.")
@click.option("--force", is_flag=True, help="Rerun finished runs instead of skipping them.")
@PROGRESS_OPTION
@click.option("--train-time-limit", type=Seconds(min=0), metavar="SECONDS",
              help="Stop this call's meta-training this many seconds after it began (checkpointed; exit status 3); rerun "
                   "to resume. Processes given the same command share its models out (0: one step of a new model).")
@click.option("--no-train", "no_train", is_flag=True,
              help="Train nothing: evaluate learned models from their checkpoints (cached or shipped in "
                   "results/checkpoints) as they stand, a paused one at its step (the table shows 'done of planned "
                   "updates'); a model without one is refused. A later run without it trains a paused one on.")
@click.option("--launcher", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: runs in this process; ray: runs as Ray tasks (pip install -e '.[ray]' in the checkout).")
@click.option("--address", help="Address of an existing Ray cluster (with --launcher ray): HOST:PORT, auto or ray://. "
                                "Default: Ray's rule ($RAY_ADDRESS, else a cluster `ray start` began on this machine, "
                                "else a new local Ray).")
@click.option("--option", "options", multiple=True, callback=parse_options, metavar="KEY=VALUE",
              help="Model option for every run, repeatable (a field of a learned model's config, e.g. hidden=256, or of "
                   "its training config as train.FIELD, e.g. train.num_patterns=null to train one model per N, or a "
                   "constructor argument of an untrained model, which ignores train.* options where a learned model "
                   "shares the run and is refused them alone); part of the run ids and checkpoint keys.")
@DATA_DIR_OPTION
@friendly_errors
def run(suite, models, num_patterns, seeds, queries, preset, budget, device, out, checkpoint_dir, force, progress,
        train_time_limit, no_train, launcher, address, options, data_dir) -> None:
    """Run a suite (skipping finished runs), then print its report."""
    from membench.datasets import set_data_dir
    from membench.report import table1
    from membench.runner import run_all
    from membench.store import discard_if_unused
    from membench.suites import CapacitySuite, ImageCapacitySuite
    from membench.sweeps import SweepSuite

    set_data_dir(data_dir)
    chosen, specs = suite_runs(suite, models, num_patterns, seeds, queries, preset, budget, options)
    if address and launcher != "ray":
        raise MembenchError("--address is for --launcher ray; add --launcher ray or drop --address")
    made = [folder for folder in (out, *out.absolute().parents) if not folder.exists()]  # deepest first
    try:
        done = run_all(specs, out, device=device, force=force, checkpoint_dir=checkpoint_dir, progress=progress,
                       train_time_limit_s=train_time_limit, launcher=launcher, address=address, train=not no_train)
    except BaseException:  # bad input found only while running, Ctrl-C, a full disk
        if made:  # leave no empty output folder behind, nor the folders made to hold it
            discard_if_unused(out)
            for folder in made[1:]:
                with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
                    folder.rmdir()
        raise
    now = [r["training"]["trained_by_this_run"] for r in done if r.get("training")]
    if not now:
        training = ""
    elif any(stretch["steps"] for stretch in now):
        training = f"; meta-training in this call: {sum(stretch['train_time_s'] for stretch in now):.1f} s"
    elif no_train:
        paused = sum(r["training"].get("finished") is False for r in done if r.get("training"))
        training = (f"; --no-train: evaluated from the checkpoints as they stand"
                    f"{f' ({paused} run(s) from a paused one)' if paused else ''}")
    else:
        training = "; no meta-training in this call (every checkpoint was trained already)"
    click.echo(f"{len(done)} run(s) executed, {len(set(s.run_id for s in specs)) - len(done)} already finished, "
               f"in {out}{training}")
    if isinstance(chosen, SweepSuite):
        from membench.figure3 import DEFAULT_REFERENCE, image_records, load_reference, summarise, summary_markdown

        click.echo(summary_markdown(summarise(image_records(out), load_reference(DEFAULT_REFERENCE))))
    elif isinstance(chosen, (CapacitySuite, ImageCapacitySuite)):  # summarised with the other capacity suites
        data = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir else ""
        click.echo(f"tables and figures: membench capacity --out {shlex.quote(str(out))}{data}")
    else:
        click.echo(table1(out))
        click.echo(f"wrote {out / 'table1'}.md, .csv and .tex")


@main.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Output directory holding runs/.")
@click.option("--reference", type=PathArg(dir_okay=False, path_type=Path),
              help="Paper's Table 1 CSV. Default: results/reference/paper_table1.csv of this checkout.")
@friendly_errors
def report(out, reference) -> None:
    """Write the bit-error table (OUT/table1.md, .csv, .tex) and training curves from stored runs."""
    from membench.report import DEFAULT_REFERENCE, table1

    from membench.plots import read_curves, training_curves

    if reference is not None and not reference.exists():
        raise MembenchError(f"reference file {reference} does not exist; omit --reference to use the default")
    curves = read_curves(out, images=False)  # every input read before any output is written (Figure 3's: figures)
    no_folder_in_the_way([out / f"training_curves.{suffix}" for suffix in ("png", "pdf")])
    click.echo(table1(out, reference or DEFAULT_REFERENCE))
    click.echo(f"wrote {out / 'table1'}.md, .csv and .tex")
    for path in training_curves(out, curves):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Output directory holding runs/ of fig3-* suites.")
@click.option("--reference", type=PathArg(dir_okay=False, path_type=Path),
              help="Paper's Figure 3 CSV. Default: results/reference/paper_fig3.csv of this checkout.")
@click.option("--checkpoint-dir", type=PathArg(file_okay=False, path_type=Path),
              help="Where trained checkpoints are cached (for the reconstruction grids).")
@click.option("--grids/--no-grids", default=True, help="Draw reconstruction grids (query, retrieval, original).")
@DATA_DIR_OPTION
@friendly_errors
def figures(out, reference, checkpoint_dir, grids, data_dir) -> None:
    """Write Figure 3 (OUT/fig3.{md,csv,png,pdf}) and reconstruction grids from stored runs."""
    from membench.datasets import set_data_dir
    from membench.figure3 import DEFAULT_REFERENCE, figures as draw

    if reference is not None and not reference.exists():
        raise MembenchError(f"reference file {reference} does not exist; omit --reference to use the default")
    set_data_dir(data_dir)
    markdown, paths = draw(out, reference or DEFAULT_REFERENCE, checkpoint_dir, grids)
    click.echo(markdown)
    for path in paths:
        click.echo(f"wrote {path}")


@main.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Output directory holding runs/ of the capacity-* suites (`make capacity`: results/capacity).")
@DATA_DIR_OPTION
@friendly_errors
def capacity(out, data_dir) -> None:
    """Write the capacity figures and tables (OUT/capacity_*.{png,pdf}, capacity.md, .csv) from stored runs."""
    from membench.capacity import capacity_figures
    from membench.datasets import set_data_dir

    set_data_dir(data_dir)  # an image table names why a model is absent by rebuilding its task
    for path in capacity_figures(out):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--results", default="results", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Folder holding table1/ and fig3/ (the committed results).")
@click.option("--file", "readme", default="README.md", show_default=True, type=PathArg(dir_okay=False, path_type=Path),
              help="The README whose marked tables are rewritten.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a table differs from its records.")
@friendly_errors
def readme(results, readme, check) -> None:
    """Rewrite the README's result tables (between <!-- results:NAME --> markers) from the records."""
    from membench.readme import sync

    stale = sync(readme, results, write=not check)
    if check and stale:
        raise MembenchError(f"{readme}: the tables {', '.join(stale)} differ from the records in {results}; "
                            "run `membench readme` (or `make readme`) to rewrite them")
    click.echo(f"{readme}: {'rewrote ' + ', '.join(stale) if stale else 'tables match the records'}")


@main.command()
@click.argument("dataset", type=click.Choice(["omniglot", "cifar10"]))
@DATA_DIR_OPTION
@PROGRESS_OPTION
@friendly_errors
def download(dataset, data_dir, progress) -> None:
    """Fetch a data set's published files into the data directory (CIFAR-10 md5-checked)."""
    from membench.datasets import data_dir as default_dir
    from membench.downloads import download as fetch

    for path in fetch(dataset, data_dir or default_dir(), progress=progress):
        click.echo(f"in place: {path}")


@main.command()
@click.option("--checkpoint-dir", type=PathArg(file_okay=False, path_type=Path),
              help="The checkpoint cache. Default: $MEMBENCH_CACHE/checkpoints or ~/.cache/membench/checkpoints.")
@friendly_errors
def checkpoints(checkpoint_dir) -> None:
    """List the trained checkpoints, cached and shipped: where each stands (step of planned), which devices trained
    it, whether AdamW's state is kept (resumable as it was), and its size."""
    from tabulate import tabulate

    from membench.checkpoints import default_checkpoint_dir
    from membench.shipping import standing

    cache = checkpoint_dir or default_checkpoint_dir()
    if not cache.is_dir():
        click.echo(f"no cache folder {cache} (nothing trained on this machine there yet)")
    rows = standing(cache)
    click.echo(tabulate(rows, headers="keys", tablefmt="github") if rows else "no checkpoints, cached or shipped")


@main.command()
@click.option("--suite", default="table1", show_default=True,
              help="table1 (the binary task at each --num-patterns) or a rate sweep (fig3-omniglot, fig3-cifar: "
                   "each point of the models' curves).")
@click.option("--model", "models", multiple=True, default=("ebmm",), show_default=True,
              help="Learned model; repeatable.")
@click.option("--preset", default="quick", show_default=True, help="Training preset (as for `membench run`).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--num-patterns", default="64", callback=int_list(1, MAX_SIZE), show_default=True,
              help="Comma-separated N.")
@click.option("--batch-sizes", callback=int_list(1, MAX_SIZE),
              help="Comma-separated episodes per update. Default: the preset's.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Timed updates per row.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(1),
              help="Untimed updates first (at least one: a first update pays for allocations; the row says how many).")
@click.option("--cuda-graph/--no-cuda-graph", default=False, help="Replay updates from CUDA graphs (CUDA only).")
@click.option("--compile/--eager", "compile_", default=None,
              help="torch.compile the meta-loss, or not. Default: as the preset says.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(PRECISIONS),
              help="Arithmetic of the meta-loss (train.precision; tf32: CUDA only); repeatable, a row each. Default: "
                   "the preset's.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Time the rows in turn this many times; each keeps its median round.")
@click.option("--option", "options", multiple=True, callback=parse_options, metavar="KEY=VALUE",
              help="Change the preset as `membench run --option` does (e.g. hidden=256, grad_norm_term=false); "
                   "repeatable; the row's options column.")
@click.option("--reference", metavar="COMMIT",
              help="Also time this commit's own EBMM quick benchmark (16 episodes an update, or refused) in a "
                   "temporary worktree, in the same rounds.")
@click.option("--out", default=f"{DEFAULT_OUT}/bench/throughput.csv", show_default=True,
              type=PathArg(dir_okay=False, path_type=Path),
              help="CSV the rows are merged into (`make throughput`: the committed results/bench/throughput.csv).")
@DATA_DIR_OPTION
@friendly_errors
def throughput(suite, models, preset, device, num_patterns, batch_sizes, steps, warmup, cuda_graph, compile_,
               precisions, options, rounds, reference, out, data_dir) -> None:
    """Time meta-training updates (episodes/s) and merge the rows into OUT."""
    from tabulate import tabulate

    from membench.datasets import set_data_dir
    from membench.build import resolve_device
    from membench.throughput import check_precisions, existing_table, measure, merge, run_specs

    set_data_dir(data_dir)
    check_precisions(precisions, resolve_device(device).type, cuda_graph)
    requests = [dict(spec=spec, device=resolve_device(device), batch_size=batch, steps=steps, warmup=warmup,
                     cuda_graph=cuda_graph, compile=compile_, precision=precision)
                for spec in run_specs(suite, models, num_patterns, preset, options)
                for batch in (batch_sizes or (None,)) for precision in (precisions or (None,))]
    writable_folder(out.parent, "--out's folder")  # a table that cannot be written or read: refused before timing
    existing_table(out)
    rows = measure(requests, rounds, reference, on_row=lambda row: merge(out, [row]))
    merge(out, rows)  # again with the reference's columns, when timed beside one
    shown = ["device_name", "suite", "model", "preset", "options", "budget", "batch_size", "num_patterns", "cuda_graph",
             "compiled", "precision", "commit", "episodes_per_s", "ms_per_step"]
    table = [[row[c] for c in shown] for row in rows]
    if reference:  # each timed row against the reference commit timed in the same rounds
        shown = [*shown, "speed-up"]
        table = [[*line, round(row["reference_ms"] / row["ms_per_step"], 2) if "reference_ms" in row else ""]
                 for line, row in zip(table, rows)]
    click.echo(tabulate(table, headers=shown, tablefmt="github"))
    click.echo(f"merged {len(rows)} row(s) into {out}")


for session_command in COMMANDS:
    main.add_command(session_command)

if __name__ == "__main__":
    main()
