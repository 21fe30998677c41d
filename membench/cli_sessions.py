"""Commands for lent machines and carried results: `membench session | pack | unpack | ship | set-aside`.

Registered on the `membench` group by membench.cli."""
from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import click

from membench.cli_common import ExitWith, PathArg, Seconds, friendly_errors, suite_runs
from membench.errors import EXIT_PAUSED, MembenchError
from membench.store import warn, writable_folder


def _command(name: str) -> click.Command:
    """The `membench NAME` command, whichever module defines it."""
    from membench.cli import main

    return main.commands[name]


@click.command()
@click.option("--out", default="results/table1", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="Output directory whose trained records' checkpoints are shipped.")
@click.option("--checkpoint-dir", type=PathArg(file_okay=False, path_type=Path),
              help="The checkpoint cache. Default: $MEMBENCH_CACHE/checkpoints or ~/.cache/membench/checkpoints.")
@click.option("--checkpoint", "files", multiple=True, type=PathArg(dir_okay=False, path_type=Path),
              help="Also ship this <checkpoint key>.pt file (repeatable), e.g. paused training carried back "
                   "from a GPU machine, so the next machine resumes it.")
@friendly_errors
def ship(out, checkpoint_dir, files) -> None:
    """Write the checkpoints behind OUT's trained records (and any --checkpoint), weights only (an unfinished
    one with its optimiser state where small), into
    results/checkpoints (committed with them); a shipped checkpoint is replaced only by one trained further."""
    from membench.checkpoints import (SHIPPED_CHECKPOINTS, UNREADABLE, default_checkpoint_dir, layout,
                                      read_checkpoint, readable_checkpoint)
    from membench.shipping import KEY_PATTERN, ship_checkpoints

    if not files and not (out / "runs").is_dir():
        raise MembenchError(f"{out} holds no runs/ folder; give --out the results folder of trained runs, or "
                            "--checkpoint FILE")
    for file in (f for f in files if f.is_file()):  # one named on purpose that cannot be shipped: an error
        if not KEY_PATTERN.fullmatch(file.stem) or file.suffix != ".pt":
            raise MembenchError(f"{file} is not named <model>-<preset>-<12 hex digits>.pt, as training names a "
                                "checkpoint, and no run would look it up: give the file under the name it was "
                                "written with")
        try:
            saved = read_checkpoint(file)
        except UNREADABLE as exc:
            raise MembenchError(f"checkpoint {file} is unreadable ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); give a <key>.pt file "
                                "a training run wrote") from None
        shipped = readable_checkpoint(SHIPPED_CHECKPOINTS / file.name)
        if shipped is not None and layout(shipped) != layout(saved):
            raise MembenchError(f"{file} holds other weights (names or shapes) than the shipped {file.name}: another "
                                "model's checkpoint under its name, or the model's code changed since that one was "
                                "shipped; nothing was shipped (give the file under the name it was written with, or "
                                "delete the shipped one first)")
    shipped = ship_checkpoints(out, checkpoint_dir or default_checkpoint_dir(), files)
    for path in shipped:
        click.echo(f"shipped {path}")
    if not shipped:
        click.echo(f"nothing shipped: {SHIPPED_CHECKPOINTS} holds every checkpoint found as far as it is trained")


@click.command()
@click.option("--run", "runs", required=True, multiple=True, metavar="ARGS",
              help="The arguments of one `membench run` (quoted), repeatable; e.g. \"--suite table1-learned "
                   "--model ebmm --preset gpu --out results/table1\".")
@click.option("--copies", default=1, show_default=True, type=click.IntRange(1),
              help="Processes started with each --run (they share its models out).")
@click.option("--train-time-limit", required=True, type=Seconds(min=0), metavar="SECONDS",
              help="Training stops this many seconds after the session began (rerun the session to resume).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--to", "archive", required=True, type=PathArg(dir_okay=False, path_type=Path),
              help="The archive the session's new results and checkpoints are packed into.")
@click.option("--results", default="results", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="The results folder the runs write under (what is packed).")
@click.option("--cache", default="/tmp/membench-session", show_default=True,
              type=PathArg(file_okay=False, path_type=Path), help="The session's checkpoint cache and logs.")
@click.option("--grace", default=120.0, show_default=True, type=Seconds(min=0), metavar="SECONDS",
              help="Time after the training limit for evaluation; processes still running then are interrupted.")
@click.option("--throughput", "time_updates", is_flag=True,
              help="First time the gpu preset's EBMM update at its batch, 128 episodes of N = 64 (membench "
                   "throughput): eager kernels replayed from a CUDA graph in float32 (the issue's row, 50 updates) and "
                   "TF32 (on a CPU bf16), then compiled kernels.")
@click.option("--time-cap", default=90.0, show_default=True, type=Seconds(min=1), metavar="SECONDS",
              help="Each timing command (--throughput, --time) is interrupted after this long (compiling can take "
                   "minutes): the training's time is the session's.")
@click.option("--time", "timings", multiple=True, metavar="ARGS",
              help="First run `membench throughput ARGS` (its --device and --out added: the session's), e.g. "
                   "'--suite fig3-cifar --model ebmm --preset gpu --cuda-graph'; repeatable, after --throughput.")
@friendly_errors
def session(runs, copies, train_time_limit, device, archive, results, cache, grace, time_updates, time_cap,
            timings) -> None:
    """One session on a lent machine as one bounded command: the --run processes side by side, then what
    they made packed into one archive (exit 3: some training paused; run the session again to resume)."""
    from membench.packing import volume_path
    from membench.build import resolve_device
    from membench.session import check_outs, run_session

    results_folder(results)
    check_outs(runs, results)  # before --to's folder is made
    resolve_device(device)  # --device cuda without a CUDA device: refused before anything runs or is packed
    for args in runs:
        _check_run_command(args)
    first = []
    if time_updates:  # the preset's batch: float32 eager (the row issue 14 asks for), reduced precision, compiled last
        timing = ["throughput", "--model", "ebmm", "--preset", "gpu", "--device", device, "--batch-sizes", "128",
                  "--cuda-graph" if device == "cuda" else "--no-cuda-graph",
                  "--out", str(results / "bench" / "throughput.csv")]
        reduced = ["--precision", "tf32"] if device == "cuda" else ["--precision", "bf16"]
        first += [[*timing, "--steps", "50", "--eager"], [*timing, "--steps", "20", "--eager", *reduced],
                  [*timing, "--steps", "20", "--compile"]]
    first += [_timing_command(args, device, results / "bench" / "throughput.csv") for args in timings]
    writable_archive(archive)  # before the session's work, not when packing it
    status = run_session(runs, copies, train_time_limit, device, cache, archive, results, first, grace, time_cap)
    click.echo(f"packed into {archive} (and its volumes {volume_path(archive, 2).name} ... if any); then here: "
               f"membench unpack <them all>, membench report, membench readme")
    if status == EXIT_PAUSED:
        raise ExitWith(f"session ended with status {status}: training paused; the archive holds its checkpoints, "
                       "run the same session again to go on", status, "Paused")
    if status:
        raise ExitWith(f"session ended with status {status}: a command failed (its error is above); the archive "
                       "holds what the others finished", status)


def results_folder(results: Path) -> None:
    """MembenchError unless --results is a checkout's results/ folder: an archive names its files under results/,
    where `membench unpack` writes them."""
    if results.resolve().name != "results":
        raise MembenchError(f"--results {results} is not a checkout's results/ folder: an archive's files are unpacked "
                            "under results/, so give that folder (the runs' --out folders below it)")


def archive_name(archive: Path) -> None:
    """MembenchError unless `archive` (--to) is named as the gzipped tar it will be."""
    if not archive.name.endswith((".tgz", ".tar.gz")):
        raise MembenchError(f"--to {archive} is written as a gzipped tar: give it a name ending .tgz or .tar.gz")


def writable_archive(archive: Path) -> None:
    """MembenchError unless `archive` (--to) is named as the gzipped tar it will be, in a folder that can be
    written (made if absent)."""
    archive_name(archive)
    writable_folder(archive.parent, "--to's folder")


def parsed(name: str, flag: str, args: str, extra: tuple[str, ...] = ()) -> dict:
    """The parameters of `membench NAME ARGS EXTRA` as that command parses them; MembenchError naming `flag`."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a help page asked for: refused below, not printed
            return _command(name).make_context(name, [*shlex.split(args), *extra]).params
    except click.exceptions.Exit:
        raise MembenchError(f"{flag} '{args}' asks for help; give the {name} command's own options") from None
    except (ValueError, click.UsageError) as exc:
        reason = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
        raise MembenchError(f"{flag} '{args}' is not a `membench {name}` command line: {reason}") from None


SESSION_RUN_FLAGS = {"--device", "--train-time-limit", "--checkpoint-dir"}  # what the session gives each --run


def _check_run_command(args: str) -> None:
    """Refuse (MembenchError) a session's `--run ARGS` that `membench run` would refuse before any work: its
    options, suite, models, presets and model options (so no session time is spent first)."""
    from membench.datasets import set_data_dir
    from membench.preflight import checked_specs

    params = parsed("run", "--run", args)
    owned = sorted({token.split("=")[0] for token in shlex.split(args)} & SESSION_RUN_FLAGS)
    if owned:
        raise MembenchError(f"--run '{args}': {', '.join(owned)} is the session's own (every run gets the "
                            "session's device, time and cache): give it to `membench session`, or leave it out")
    set_data_dir(params["data_dir"])
    try:
        checked_specs(suite_runs(params["suite"], params["models"], params["num_patterns"], params["seeds"],
                                 params["queries"], params["preset"], params["budget"], params["options"])[1])
    except MembenchError as exc:
        raise MembenchError(f"--run '{args}': {exc}") from None


def _timing_command(args: str, device: str, table: Path) -> list[str]:
    """`membench throughput ARGS` on the session's device into its table, as arguments; refused (MembenchError)
    unless throughput would accept it: its options, suite, models and data."""
    from membench.datasets import set_data_dir
    from membench.build import resolve_device
    from membench.throughput import check_precisions, run_specs

    try:
        device_type = resolve_device(device).type
    except MembenchError as exc:
        raise MembenchError(f"--time '{args}': {exc}") from None
    graphs = () if device_type == "cuda" else ("--no-cuda-graph",)  # a CPU rehearsal: none
    extra = ("--device", device, *graphs, "--out", str(table))
    params = parsed("throughput", "--time", args, extra)
    set_data_dir(params["data_dir"])
    try:
        check_precisions(params["precisions"], device_type, params["cuda_graph"])
        run_specs(params["suite"], params["models"], params["num_patterns"], params["preset"], params["options"])
    except MembenchError as exc:
        raise MembenchError(f"--time '{args}': {exc}") from None
    return ["throughput", *shlex.split(args), *extra]


@click.command()
@click.option("--to", "archive", required=True, type=PathArg(dir_okay=False, path_type=Path),
              help="The archive to write (.tar.gz), e.g. $OUT/session.tgz on a lent GPU machine.")
@click.option("--since", "mark", required=True, type=PathArg(exists=True, dir_okay=False, path_type=Path),
              help="A file touched when the session began: only files written after it are packed (of the "
                   "throughput table, only rows measured after it).")
@click.option("--results", default="results", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="The results folder whose new files are packed.")
@click.option("--checkpoint-dir", type=PathArg(file_okay=False, path_type=Path),
              help="The checkpoint cache whose new checkpoints are packed. Default: $MEMBENCH_CACHE/checkpoints or "
                   "~/.cache/membench/checkpoints.")
@friendly_errors
def pack(archive, mark, results, checkpoint_dir) -> None:
    """Pack what a session made (new results files, new checkpoints: `checkpoints.portable`) into an archive (and up to
    three volumes of at most 16 MB beside it) to carry back; `membench unpack` adds them to a checkout."""
    from membench.checkpoints import default_checkpoint_dir
    from membench.packing import pack as pack_archive

    if not results.is_dir():
        raise MembenchError(f"--results {results} is not a folder; give the results folder the session wrote into")
    archive_name(archive)
    results_folder(results)
    writable_folder(archive.parent, "--to's folder")  # last: it makes the folder
    names = pack_archive(archive, mark.stat().st_mtime, results, checkpoint_dir or default_checkpoint_dir())
    click.echo(f"packed {len(names)} file(s) into {archive} (and its volumes, if any)" + (": " + ", ".join(names)
                                                                                         if names else ""))


@click.command()
@click.argument("archives", nargs=-1, required=True, type=PathArg(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", default=".", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="The checkout whose results/ receives the archive's results files.")
@friendly_errors
def unpack(archives, root) -> None:
    """Add session archives (`membench pack`: session.tgz and its volumes session-2.tgz, ...) to the checkout
    ROOT: their results files, and their checkpoints shipped into ROOT/results/checkpoints, so the next
    session resumes from them."""
    from pathlib import PurePosixPath

    from membench import checkpoints
    from membench.archive import (CHECKPOINTS, RESULTS, check_checkpoints, check_targets, read_archive,
                                  unpack as unpack_archive)
    from membench.packing import MAX_VOLUMES, volume_label, volume_path
    from membench.set_aside import deleted_results

    if not (root / RESULTS).is_dir():
        raise MembenchError(f"{root} is not a membench checkout (no {RESULTS}/ folder); give --root the checkout "
                            "the session's archive belongs to")
    deleted = deleted_results(root)
    if deleted:  # `git checkout -- results` after unpacking would undo what it wrote into them
        raise MembenchError(f"{len(deleted)} file(s) git holds under {root}/{RESULTS} are deleted from the working "
                            f"tree, as `membench set-aside` leaves them (e.g. {deleted[0]}): bring them back first "
                            f"(`git checkout -- {RESULTS}`), then unpack; nothing was unpacked")
    given = {archive.resolve() for archive in archives}
    for archive in archives:  # a volume lying beside a given archive, not given itself: its files would be missed
        left = [volume_path(archive, n) for n in range(2, MAX_VOLUMES + 1) if volume_path(archive, n).is_file()
                and volume_path(archive, n).resolve() not in given]
        if left:
            raise MembenchError(f"{archive} has the volume {left[0]} beside it, not given: unpack them all in one "
                                f"command (membench unpack {archive} {' '.join(map(str, left))}); nothing was unpacked")
        number, count = volume_label(archive) or (0, 0)
        lost = [volume_path(archive, n) for n in range(2, count + 1) if number == 1
                and volume_path(archive, n).resolve() not in given]
        if lost:  # a record and its checkpoint may travel in different volumes: none is unpacked without the rest
            raise MembenchError(f"{archive} is the first of {count} volumes, and {lost[0]} is not here (left out of "
                                "what the machine returned?): carry every volume back and unpack them all in one "
                                "command; nothing was unpacked")
    contents = [read_archive(archive)[0] for archive in archives]  # every archive checked before any is unpacked
    arriving: dict[str, dict] = {}  # checkpoint key -> checkpoint, of every archive (a record's may be in another)
    bad: set[str] = set()
    for archive, members in zip(archives, contents):
        check_targets(archive, members, root)
        readable, unreadable = check_checkpoints(archive, members)
        arriving.update(readable)
        bad |= {PurePosixPath(name).stem for name in unreadable}
    if not any(contents):  # not an error: a session whose runs were all finished already makes nothing new
        click.echo(f"{', '.join(map(str, archives))}: no file in it, nothing unpacked (a session whose runs were "
                   "finished already makes nothing new)")
        return
    unreadable, shipped_any = [], False
    for archive in archives:
        written, shipped, skipped = unpack_archive(archive, root, (arriving, bad))
        shipped_any = shipped_any or bool(shipped)
        for path in written:
            click.echo(f"wrote {path}")
        for path in shipped:
            click.echo(f"shipped {path}")
        unreadable += [f"{archive}: {name}" for name in skipped]
    target, read_from = (root / RESULTS / CHECKPOINTS).resolve(), checkpoints.SHIPPED_CHECKPOINTS.resolve()
    if shipped_any and target != read_from:  # e.g. a worktree's, with membench installed from the main checkout
        warn(f"the checkpoints were shipped into {target}, but this membench (imported from {read_from.parent.parent}) "
             f"looks for shipped checkpoints in {read_from}: runs resume or evaluate them only from that checkout "
             f"(`pip install -e {root}`, or PYTHONPATH={root})")
    click.echo("then: membench report --out <the results folder>, membench readme, and commit")
    if unreadable:  # everything else is written: a rerun of unpack is not needed, a rerun of the session is
        raise ExitWith(f"{len(unreadable)} checkpoint(s) not shipped, unreadable ({'; '.join(unreadable)}); the rest "
                       f"is unpacked; rerun the session that made them to train them again", 1)


@click.command("set-aside")
@click.option("--keep", multiple=True,
              help="A results folder the session writes into and reads (its --out, e.g. results/fig3); repeatable. "
                   "A session writing a folder that does not exist yet needs none.")
@click.option("--root", default=".", show_default=True, type=PathArg(file_okay=False, path_type=Path),
              help="The checkout a lent machine copies.")
@friendly_errors
def set_aside(keep, root) -> None:
    """Before a call to a lent machine: delete from the working tree the results its session does not need
    (every folder under results/ but results/bench, results/reference and the --keep folders; finished
    checkpoints whose runs have records at every N their suite evaluates), so the copy it carries has room for
    the checkpoints it resumes. After the call, before `membench unpack`, `git checkout -- results` brings them
    all back."""
    from membench.set_aside import set_aside as delete_unneeded

    deleted, size = delete_unneeded(root, keep)
    click.echo(f"set aside {len(deleted)} file(s), {size / 2**20:.1f} MiB, from {root}/results "
               f"(`make device-size`: what a lent machine carries now); after the call, before unpacking: "
               "git checkout -- results")


COMMANDS = (ship, session, pack, unpack, set_aside)
