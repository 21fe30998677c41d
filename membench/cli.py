"""Command line: `membench list | run | report | figures | ship | session | pack | unpack | capacity | readme | throughput | download`."""
from __future__ import annotations

import dataclasses
import functools
import json
import pickle
import shlex
from pathlib import Path

import click

from membench.errors import EXIT_INTERRUPTED, EXIT_PAUSED, MembenchError, TrainingInterrupted, TrainingPaused
from membench.interface import PRECISIONS

MAX_SEED = 2**31 - 1
DEFAULT_OUT = "membench-results"


class ExitWith(click.ClickException):
    """'Error: <message>' and a chosen exit status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _int_list(low: int, high: int | None = None):
    """Click callback: comma-separated integers in [low, high], duplicates dropped, at least one."""

    def parse(_ctx, param, value: str | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        try:
            numbers = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers such as 0,1,2; got '{value}'") from None
        if not numbers:
            raise click.BadParameter(f"give at least one value, e.g. --{param.name.replace('_', '-')} {low}")
        bad = [n for n in numbers if n < low or (high is not None and n > high)]
        if bad:
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise click.BadParameter(f"{bad[0]} is out of range: values must be {bounds}")
        return tuple(dict.fromkeys(numbers))

    return parse


def _options(_ctx, _param, values: tuple[str, ...]) -> dict[str, object]:
    """Click callback: KEY=VALUE pairs (VALUE read as JSON when it parses, else as a string) -> dict."""
    options = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE such as hidden=256; got '{item}'")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


def _friendly_errors(command):
    """Turn MembenchError into 'Error: <message>' and exit status 1 (3 when paused, 130 when
    interrupted); no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TrainingPaused as exc:
            raise ExitWith(str(exc), EXIT_PAUSED) from None
        except TrainingInterrupted as exc:
            raise ExitWith(str(exc), EXIT_INTERRUPTED) from None
        except MembenchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise ExitWith("interrupted; finished runs are kept, rerun the same command to continue",
                           EXIT_INTERRUPTED) from None
        except OSError as exc:  # a file the checks before the work could not foresee (a full disk, permissions)
            if not exc.filename:  # not a file's (e.g. a connection refused): its own message
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(f"cannot read or write {exc.filename}: {exc.strerror or exc}; check the "
                                       "path, its permissions and the free space, then run the command again") from None

    return wrapper


DATA_DIR_OPTION = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding omniglot/ and cifar-10-batches-py/. Default: $MEMBENCH_DATA or ./data.")


@click.group()
@click.version_option(package_name="membench")
def main() -> None:
    """Benchmark associative memories under equal float32 budgets (EBMM paper, Table 1 and Figure 3)."""


@main.command("list")
def list_command() -> None:
    """List registered models and suites."""
    from membench.registry import available_models
    from membench.suites import SUITES

    click.echo("models:")
    for name, path in sorted(available_models().items()):
        click.echo(f"  {name:28s} {path}")
    click.echo("suites:")
    for name, suite in SUITES.items():
        click.echo(f"  {name:28s} {suite.description}")


@main.command()
@click.option("--suite", default="table1", show_default=True, help="Suite to run (see `membench list`).")
@click.option("--model", "models", multiple=True, help="Model name or module:Class; repeatable. Default: the suite's models.")
@click.option("--num-patterns", callback=_int_list(1), help="Comma-separated N values (>= 1). Default: the suite's.")
@click.option("--seeds", default="0", callback=_int_list(0, MAX_SEED), show_default=True,
              help=f"Comma-separated seeds in [0, {MAX_SEED}].")
@click.option("--queries", type=click.IntRange(1),
              help="Minimum queries per run. Default: the suite's (1000 for table1, 64000 = 1000 batches for fig3-*).")
@click.option("--preset", default="quick", show_default=True,
              help="Training preset of meta-learned models; the built-in ones have quick (CPU, minutes), gpu (one "
                   "GPU, minutes to an hour, CUDA graphs) and paper (the paper's scale, GPU days); a model of yours "
                   "may name others.")
@click.option("--budget", type=click.IntRange(1), help="Float32 budget. Default: the suite's (8256 for table1).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (records in OUT/runs).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where trained checkpoints are cached. Default: $MEMBENCH_CACHE/checkpoints or "
                   "~/.cache/membench/checkpoints.")
@click.option("--force", is_flag=True, help="Rerun finished runs instead of skipping them.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--train-time-limit", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Stop this call's meta-training this many seconds after it began (checkpointed; exit status 3); rerun "
                   "to resume. Processes given the same command share its models out (0: one step of a new model).")
@click.option("--launcher", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: runs in this process; ray: runs as Ray tasks (pip install -e '.[ray]' in the checkout).")
@click.option("--address", help="Address of an existing Ray cluster (with --launcher ray). Default: start a local Ray.")
@click.option("--option", "options", multiple=True, callback=_options, metavar="KEY=VALUE",
              help="Model option for every run, repeatable (a field of a learned model's config, e.g. hidden=256, or of "
                   "its training config as train.FIELD, e.g. train.num_patterns=null to train one model per N, or a "
                   "constructor argument of an untrained model); part of the run ids and checkpoint keys.")
@DATA_DIR_OPTION
@_friendly_errors
def run(suite, models, num_patterns, seeds, queries, preset, budget, device, out, checkpoint_dir, force, progress,
        train_time_limit, launcher, address, options, data_dir) -> None:
    """Run a suite (skipping finished runs), then print its report."""
    from membench.datasets import set_data_dir
    from membench.report import table1
    from membench.runner import run_all
    from membench.suites import ImageCapacitySuite, SweepSuite

    set_data_dir(data_dir)
    chosen, specs = _run_specs(suite, models, num_patterns, seeds, queries, preset, budget, options)
    if address and launcher != "ray":
        raise MembenchError("--address is for --launcher ray; add --launcher ray or drop --address")
    done = run_all(specs, out, device=device, force=force, checkpoint_dir=checkpoint_dir, progress=progress,
                   train_time_limit_s=train_time_limit, launcher=launcher, address=address)
    click.echo(f"{len(done)} run(s) executed, {len(set(s.run_id for s in specs)) - len(done)} already finished, "
               f"in {out}")
    if isinstance(chosen, SweepSuite):
        from membench.figure3 import DEFAULT_REFERENCE, image_records, load_reference, summarise, summary_markdown

        click.echo(summary_markdown(summarise(image_records(out), load_reference(DEFAULT_REFERENCE))))
    elif isinstance(chosen, ImageCapacitySuite):
        click.echo(f"tables and figures: membench capacity --out {out}")
    else:
        click.echo(table1(out))


def _run_specs(suite, models, num_patterns, seeds, queries, preset, budget, options):
    """`membench run`'s suite and its runs, from the command's parameters."""
    from membench.suites import get_suite

    chosen = get_suite(suite)
    specs = chosen.expand(suite, tuple(models) or None, seeds, queries or chosen.queries, preset, num_patterns, budget)
    return chosen, [dataclasses.replace(s, options={**s.options, **options}) for s in specs] if options else specs


@main.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory holding runs/.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Paper's Table 1 CSV. Default: results/reference/paper_table1.csv of this checkout.")
@_friendly_errors
def report(out, reference) -> None:
    """Write the bit-error table (OUT/table1.md, .csv, .tex) and training curves from stored runs."""
    from membench.report import DEFAULT_REFERENCE, table1

    from membench.plots import read_curves, training_curves

    if reference is not None and not reference.exists():
        raise MembenchError(f"reference file {reference} does not exist; omit --reference to use the default")
    curves = read_curves(out)  # every input read before any output is written
    click.echo(table1(out, reference or DEFAULT_REFERENCE))
    for path in training_curves(out, curves=curves):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory holding runs/ of fig3-* suites.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Paper's Figure 3 CSV. Default: results/reference/paper_fig3.csv of this checkout.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where trained checkpoints are cached (for the reconstruction grids).")
@click.option("--grids/--no-grids", default=True, help="Draw reconstruction grids (query, retrieval, original).")
@DATA_DIR_OPTION
@_friendly_errors
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
@click.option("--out", default="results/table1", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory whose trained records' checkpoints are shipped.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The checkpoint cache. Default: $MEMBENCH_CACHE/checkpoints or ~/.cache/membench/checkpoints.")
@click.option("--checkpoint", "files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Also ship this <checkpoint key>.pt file (repeatable), e.g. paused training carried back "
                   "from a GPU machine, so the next machine resumes it.")
@_friendly_errors
def ship(out, checkpoint_dir, files) -> None:
    """Write the checkpoints behind OUT's trained records (and any --checkpoint), weights only, into
    results/checkpoints (committed with them); a shipped checkpoint is replaced only by one trained further."""
    from membench.runner import default_checkpoint_dir, ship_checkpoints
    from membench.training import read_checkpoint

    if not files and not (out / "runs").is_dir():
        raise MembenchError(f"{out} holds no runs/ folder; give --out the results folder of trained runs, or "
                            "--checkpoint FILE")
    for file in (f for f in files if f.is_file()):  # one named on purpose that cannot be shipped: an error
        try:
            read_checkpoint(file)
        except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            raise MembenchError(f"checkpoint {file} is unreadable ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); give a <key>.pt file "
                                "a training run wrote") from None
    for path in ship_checkpoints(out, checkpoint_dir or default_checkpoint_dir(), files):
        click.echo(f"shipped {path}")


@main.command()
@click.option("--run", "runs", required=True, multiple=True, metavar="ARGS",
              help="The arguments of one `membench run` (quoted), repeatable; e.g. \"--suite table1-learned "
                   "--model ebmm --preset gpu --out results/table1\".")
@click.option("--copies", default=1, show_default=True, type=click.IntRange(1),
              help="Processes started with each --run (they share its models out).")
@click.option("--train-time-limit", required=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="Training stops this many seconds after the session began (rerun the session to resume).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--to", "archive", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The archive the session's new results and checkpoints are packed into.")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="The results folder the runs write under (what is packed).")
@click.option("--cache", default="/tmp/membench-session", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="The session's checkpoint cache and logs.")
@click.option("--grace", default=120.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="Time after the training limit for evaluation; processes still running then are interrupted.")
@click.option("--throughput", "time_updates", is_flag=True,
              help="First time the gpu preset's EBMM updates (membench throughput: CUDA graphs of eager kernels at "
                   "batches 32, 128, 512, at 128 with TF32 and bf16 arithmetic (on a CPU bf16 only), then of "
                   "compiled kernels at 512).")
@click.option("--time", "timings", multiple=True, metavar="ARGS",
              help="First run `membench throughput ARGS` (its --device and --out added: the session's), e.g. "
                   "'--suite fig3-cifar --model ebmm --preset gpu --cuda-graph'; repeatable, after --throughput.")
@_friendly_errors
def session(runs, copies, train_time_limit, device, archive, results, cache, grace, time_updates, timings) -> None:
    """One session on a lent machine as one bounded command: the --run processes side by side, then what
    they made packed into one archive (exit 3: some training paused; run the session again to resume)."""
    from membench.session import run_session, volume_path
    from membench.store import writable_folder

    for args in runs:
        _check_run_command(args)
    first = []
    if time_updates:  # eager kernels at three meta-batches, reduced precision, compiled kernels (slow to compile) last
        timing = ["throughput", "--model", "ebmm", "--preset", "gpu", "--device", device, "--steps", "20",
                  "--cuda-graph" if device == "cuda" else "--no-cuda-graph", "--out", str(results / "bench" / "throughput.csv")]
        reduced = ["--precision", "tf32", "--precision", "bf16"] if device == "cuda" else ["--precision", "bf16"]
        first += [[*timing, "--batch-sizes", "32,128,512", "--eager"], [*timing, "--batch-sizes", "128", "--eager", *reduced],
                  [*timing, "--batch-sizes", "512", "--compile"]]
    first += [_timing_command(args, device, results / "bench" / "throughput.csv") for args in timings]
    writable_folder(archive.parent, "--to's folder")  # before the session's work, not when packing it
    status = run_session(runs, copies, train_time_limit, device, cache, archive, results, first, grace)
    click.echo(f"packed into {archive} (and its volumes {volume_path(archive, 2).name} ... if any); then here: "
               f"membench unpack <them all>, membench report, membench readme")
    if status:
        raise ExitWith(f"session ended with status {status} (3: training paused; run the same session again)",
                       status)


def _parsed(name: str, flag: str, args: str, extra: tuple[str, ...] = ()) -> dict:
    """The parameters of `membench NAME ARGS EXTRA` as that command parses them; MembenchError naming `flag`."""
    try:
        return main.commands[name].make_context(name, [*shlex.split(args), *extra]).params
    except click.exceptions.Exit:
        raise MembenchError(f"{flag} '{args}' asks for help; give the {name} command's own options") from None
    except (ValueError, click.UsageError) as exc:
        reason = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        raise MembenchError(f"{flag} '{args}' is not a `membench {name}` command line: {reason}") from None


def _check_run_command(args: str) -> None:
    """Refuse (MembenchError) a session's `--run ARGS` that `membench run` would refuse before any work: its
    options, suite, models, presets and model options (so no session time is spent first)."""
    from membench.datasets import set_data_dir
    from membench.runner import checked_specs

    params = _parsed("run", "--run", args)
    set_data_dir(params["data_dir"])
    try:
        checked_specs(_run_specs(params["suite"], params["models"], params["num_patterns"], params["seeds"],
                                 params["queries"], params["preset"], params["budget"], params["options"])[1])
    except MembenchError as exc:
        raise MembenchError(f"--run '{args}': {exc}") from None


def _timing_command(args: str, device: str, table: Path) -> list[str]:
    """`membench throughput ARGS` on the session's device into its table, as arguments; refused (MembenchError)
    unless throughput would accept it: its options, suite, models and data."""
    from membench.datasets import set_data_dir
    from membench.registry import resolve_model
    from membench.throughput import run_specs

    extra = ("--device", device, "--out", str(table))
    params = _parsed("throughput", "--time", args, extra)
    set_data_dir(params["data_dir"])
    try:
        for spec in run_specs(params["suite"], params["models"], params["num_patterns"], params["preset"],
                              params["options"]):
            resolve_model(spec.model)
    except MembenchError as exc:
        raise MembenchError(f"--time '{args}': {exc}") from None
    return ["throughput", *shlex.split(args), *extra]


@main.command()
@click.option("--to", "archive", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The archive to write (.tar.gz), e.g. $OUT/session.tgz on a lent GPU machine.")
@click.option("--since", "mark", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file touched when the session began: only files written after it are packed.")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="The results folder whose new files are packed.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The checkpoint cache whose new checkpoints are packed. Default: $MEMBENCH_CACHE/checkpoints or "
                   "~/.cache/membench/checkpoints.")
@_friendly_errors
def pack(archive, mark, results, checkpoint_dir) -> None:
    """Pack what a session made (new results files, new checkpoints weights only) into an archive (and up to
    three volumes of at most 16 MB beside it) to carry back; `membench unpack` adds them to a checkout."""
    from membench.runner import default_checkpoint_dir
    from membench.session import pack as pack_archive
    from membench.store import writable_folder

    if not results.is_dir():
        raise MembenchError(f"--results {results} is not a folder; give the results folder the session wrote into")
    writable_folder(archive.parent, "--to's folder")
    names = pack_archive(archive, mark.stat().st_mtime, results, checkpoint_dir or default_checkpoint_dir())
    click.echo(f"packed {len(names)} file(s) into {archive} and its volumes: " + ", ".join(names))


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="The checkout whose results/ receives the archive's results files.")
@_friendly_errors
def unpack(archives, root) -> None:
    """Add session archives (`membench pack`: session.tgz and its volumes session-2.tgz, ...) to the checkout
    ROOT: their results files, and their checkpoints shipped into ROOT/results/checkpoints, so the next
    session resumes from them."""
    from membench.session import unpack as unpack_archive

    for archive in archives:
        written, shipped = unpack_archive(archive, root)
        for path in written:
            click.echo(f"wrote {path}")
        for path in shipped:
            click.echo(f"shipped {path}")
    click.echo("then: membench report --out <the results folder>, membench readme, and commit")


@main.command()
@click.option("--out", default="results/capacity", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory holding runs/ of the capacity-* suites.")
@_friendly_errors
def capacity(out) -> None:
    """Write the capacity figures and tables (OUT/capacity_*.{png,pdf}, capacity.md, .csv) from stored runs."""
    from membench.capacity import capacity_figures

    for path in capacity_figures(out):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--suite", default="table1", show_default=True,
              help="table1 (the binary task at each --num-patterns) or a rate sweep (fig3-omniglot, fig3-cifar: "
                   "each point of the models' curves).")
@click.option("--model", "models", multiple=True, default=("ebmm",), show_default=True, help="Learned model; repeatable.")
@click.option("--preset", default="quick", show_default=True, help="Training preset (as for `membench run`).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--num-patterns", default="64", callback=_int_list(1), show_default=True, help="Comma-separated N.")
@click.option("--batch-sizes", callback=_int_list(1), help="Comma-separated episodes per update. Default: the preset's.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Timed updates per row.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0), help="Untimed updates first.")
@click.option("--cuda-graph/--no-cuda-graph", default=False, help="Replay updates from CUDA graphs (CUDA only).")
@click.option("--compile/--eager", "compile_", default=None,
              help="torch.compile the meta-loss, or not. Default: as the preset says.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(PRECISIONS),
              help="Arithmetic of the meta-loss (train.precision; tf32: CUDA only); repeatable, a row each. Default: "
                   "the preset's.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Time the rows in turn this many times; each keeps its median round.")
@click.option("--option", "options", multiple=True, callback=_options, metavar="KEY=VALUE",
              help="Change the preset as `membench run --option` does (e.g. hidden=256, grad_norm_term=false); "
                   "repeatable; the row's options column.")
@click.option("--reference", metavar="COMMIT",
              help="Also time this commit's own EBMM quick benchmark in a temporary worktree, in the same rounds.")
@click.option("--out", default="results/bench/throughput.csv", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="CSV the rows are merged into.")
@DATA_DIR_OPTION
@_friendly_errors
def throughput(suite, models, preset, device, num_patterns, batch_sizes, steps, warmup, cuda_graph, compile_,
               precisions, options, rounds, reference, out, data_dir) -> None:
    """Time meta-training updates (episodes/s) and merge the rows into OUT."""
    from tabulate import tabulate

    from membench.datasets import set_data_dir
    from membench.runner import resolve_device
    from membench.throughput import existing_table, measure, merge, run_specs

    set_data_dir(data_dir)
    requests = [dict(spec=spec, device=resolve_device(device), batch_size=batch, steps=steps, warmup=warmup,
                     cuda_graph=cuda_graph, compile=compile_, precision=precision)
                for spec in run_specs(suite, models, num_patterns, preset, options)
                for batch in (batch_sizes or (None,)) for precision in (precisions or (None,))]
    existing_table(out)  # a table that cannot be written or read refused before any timing
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


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding table1/ and fig3/ (the committed results).")
@click.option("--file", "readme", default="README.md", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The README whose marked tables are rewritten.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when a table differs from its records.")
@_friendly_errors
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
@_friendly_errors
def download(dataset, data_dir) -> None:
    """Fetch a data set's published files into the data directory (CIFAR-10 md5-checked)."""
    from membench.datasets import data_dir as default_dir, download as fetch

    for path in fetch(dataset, data_dir or default_dir()):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
