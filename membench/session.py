"""A session on a lent machine as one bounded command, and one archive that carries its results home.

Machines with a GPU are lent for minutes and start bare, so each session is one command
(`membench session`, `make gpu-session`): several `membench run` processes side by side on the one
device (processes given the same command share its models out; training stops when the session's
time is up, and processes still running `grace_s` later are interrupted, which checkpoints them),
then `pack` puts what they made into one .tar.gz

    results/<...>        every file under the results folder written since the session began
                         (records, training curves, throughput rows), at its path in the repository
    checkpoints/<key>.pt every checkpoint of the session's cache trained further than the one shipped
                         in results/checkpoints (`checkpoints.portable`)

in volumes of at most 16 MB, four at most (session.tgz, session-2.tgz, ...: what a lent machine returns).

Here, `unpack` checks every member before writing anything (plain files under those two folders,
no absolute or parent paths, nothing into results/checkpoints), writes the results files into the
checkout (the throughput table's rows merged into the local one) and ships the checkpoints into its
results/checkpoints (`checkpoints.ship_checkpoints`: a shipped one is replaced only by one trained
further), so the next session's same command resumes from them.
"""
from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Sequence

from membench.checkpoints import (UNREADABLE, portable, read_checkpoint, readable_checkpoint, saved_bytes,
                                  ship_checkpoints, weights_only)
from membench.errors import EXIT_INTERRUPTED, EXIT_PAUSED, MembenchError
from membench.store import better_because, completeness, parse_record, read_record, warn, write_atomic

RESULTS, CHECKPOINTS = "results", "checkpoints"
CARRY_LIMIT_MB = 16.0  # what a lent machine returns per file
MAX_VOLUMES = 4  # a lent machine returns at most 8 files of up to 16 MiB each, 64 MiB together: 4 full volumes
THROUGHPUT_CSV = "results/bench/throughput.csv"  # merged row by row on unpacking


def _out_dir(args: str) -> Path:
    """Where `membench run ARGS` writes: its --out (or the default) as the run command itself parses it."""
    from membench.cli_sessions import parsed

    return Path(parsed("run", "--run", args)["out"])


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def finish(processes: Sequence[subprocess.Popen], deadline: float, interrupt_wait_s: float = 30.0) -> list[int]:
    """Wait for `processes` until `deadline` (time.monotonic()), or until this process is interrupted (Ctrl-C,
    SIGTERM); then interrupt every one still running at once (training checkpoints and exits; evaluation stops,
    no record), wait `interrupt_wait_s` for them together and kill the rest (warned about: what it did since its
    last checkpoint is lost). Returns their exit statuses as a shell reports them, a killed one's as interrupted:
    it too was stopped for the time; raises KeyboardInterrupt after stopping them when this process was
    interrupted. (The session starts its processes in sessions of their own, so an interrupt reaches them once,
    from here: a second would stop their training at once, before it checkpoints.)"""
    interrupted = False
    try:
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    except KeyboardInterrupt:
        interrupted = True
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    stop, killed = time.monotonic() + interrupt_wait_s, set()
    for process in running:
        try:
            process.wait(timeout=max(0.0, stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed.add(process.pid)
            warn(f"killed {shlex.join(map(str, process.args))}: it did not stop within {interrupt_wait_s:g} s of "
                 f"its interrupt (work since its last checkpoint is lost)")
    if interrupted:
        raise KeyboardInterrupt
    return [EXIT_INTERRUPTED if process.pid in killed else _status(process.returncode) for process in processes]


def check_outs(runs: Sequence[str], results_dir: Path) -> None:
    """MembenchError unless every `membench run` of `runs` writes under `results_dir` (what is packed)."""
    for args in runs:
        if not _out_dir(args).resolve().is_relative_to(Path(results_dir).resolve()):
            raise MembenchError(f"--run '{args}' must write under the results folder {results_dir} "
                                f"(give it --out {results_dir}/...), or what it makes would not be packed")


def run_session(runs: Sequence[str], copies: int, train_time_limit_s: float, device: str, cache: Path,
                archive: Path, results_dir: Path, first: Sequence[Sequence[str]] = (), grace_s: float = 120.0,
                first_cap_s: float = float("inf")) -> int:
    """Run the membench commands `first` one after another, each interrupted after `first_cap_s` or when the
    training time is up (the rest then skipped), then start `copies` processes of `membench run <args>` for each string of
    `runs`, all at once, on the session's device and checkpoint cache, their training ending
    `train_time_limit_s` after the session began (`first` included). Processes still running `grace_s`
    after that are interrupted together (they checkpoint) and, 30 s later, killed (`finish`), so the
    session ends by train_time_limit_s + grace_s + 30 s and packing. Prints the end of each log and packs
    what was written into `archive` and its volumes (`pack`). Returns 0 when every command finished, 3
    when some training paused or a command of `first` was cut short or skipped for the time, else the
    first other exit status (a failing command of `first` does not keep the runs from starting). Interrupted
    (Ctrl-C, SIGTERM), it stops its processes as at the grace's end, packs what they made and raises
    KeyboardInterrupt."""
    results_dir, cache = Path(results_dir), Path(cache)
    check_outs(runs, results_dir)
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    started, clock = time.time(), time.monotonic()
    statuses, children = [], []  # children: every process started, to stop the ones left running when interrupted
    try:
        for command in first:  # cut short or skipped for the time: paused, like training (the rows kept are merged)
            if time.monotonic() >= clock + train_time_limit_s:
                print(f"== skipped membench {shlex.join(command)}: the session's training time is spent", flush=True)
                statuses.append(EXIT_PAUSED)
                continue
            print(f"== membench {shlex.join(command)}", flush=True)  # its output follows, unprefixed
            process = subprocess.Popen([sys.executable, "-m", "membench.cli", *command], start_new_session=True)
            children.append(process)
            deadline = min(clock + train_time_limit_s, time.monotonic() + first_cap_s)
            statuses += [EXIT_PAUSED if status == EXIT_INTERRUPTED else status
                         for status in finish([process], deadline)]
        left = max(0.0, train_time_limit_s - (time.monotonic() - clock))
        processes = []
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, len(runs) * copies)))
        for number, args in enumerate(runs):
            for copy in range(copies):
                log = cache / f"run-{number}-{copy}.log"
                command = [sys.executable, "-m", "membench.cli", "run", *shlex.split(args), "--device", device,
                           "--no-progress", "--checkpoint-dir", str(cache / "checkpoints"),
                           "--train-time-limit", f"{left:.1f}"]
                with open(log, "wb") as handle:  # the CPU's cores shared among the runs (their sampling, their loss)
                    children.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                     env={**os.environ, "OMP_NUM_THREADS": threads},
                                                     start_new_session=True))
                processes.append((args, log, children[-1]))
        ended = finish([process for _, _, process in processes], clock + train_time_limit_s + grace_s)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: its processes are stopped (`finish`); what they made travels
        finish([child for child in children if child.poll() is None], time.monotonic())
        pack(archive, started, results_dir, cache / "checkpoints")
        raise
    for (args, log, _), status in zip(processes, ended):
        statuses.append(EXIT_PAUSED if status == EXIT_INTERRUPTED else status)  # stopped at the grace's end
        tail = log.read_text(errors="replace").splitlines()[-12:]
        print(f"== membench run {args} (exit {status})", *tail, sep="\n", flush=True)
    pack(archive, started, results_dir, cache / "checkpoints")
    failed = [status for status in statuses if status not in (0, EXIT_PAUSED)]
    return failed[0] if failed else (EXIT_PAUSED if EXIT_PAUSED in statuses else 0)


def volume_path(archive: Path, number: int) -> Path:
    """The archive's volume `number` (1: the archive itself; then <stem>-2.tgz, ...)."""
    archive = Path(archive)
    stem = archive.name.removesuffix(".tgz").removesuffix(".tar.gz")
    return archive if number == 1 else archive.with_name(f"{stem}-{number}.tgz")


def pack(archive: Path, since: float, results_dir: Path, checkpoint_dir: Path) -> list[str]:
    """Write the files under `results_dir` modified since `since` (seconds since the epoch; results/checkpoints
    aside) and the checkpoints (*.pt) of `checkpoint_dir` modified since then and trained further than the one
    shipped in results_dir/checkpoints (`checkpoints.portable`: weights only once finished, smallest first) into `archive` (.tar.gz) and, where they
    do not fit in CARRY_LIMIT_MB, further volumes (`volume_path`), at most MAX_VOLUMES in all: what a lent
    machine returns. Unfinished checkpoints then take their AdamW state where a volume has room (or a further
    volume may open). A checkpoint that fits nowhere is left out, warned. Returns the member names."""
    results_dir, checkpoint_dir = Path(results_dir), Path(checkpoint_dir)
    members: dict[str, bytes] = {}
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if (path.is_file() and path.stat().st_mtime >= since and relative.parts[0] != CHECKPOINTS
                and not any(part.startswith(".") for part in relative.parts)):
            members[str(PurePosixPath(RESULTS, *relative.parts))] = path.read_bytes()
    resumable: dict[str, bytes] = {}  # unfinished checkpoints with their optimiser state, where room remains
    for path in sorted(checkpoint_dir.glob("*.pt"), key=lambda p: p.stat().st_size):  # smallest first
        if path.stat().st_mtime < since or (saved := readable_checkpoint(path)) is None:
            continue
        shipped = results_dir / CHECKPOINTS / path.name
        if shipped.exists() and saved["step"] <= ((readable_checkpoint(shipped) or {}).get("step") or 0):
            continue  # only copied from the shipped one (used, not trained further)
        members[f"{CHECKPOINTS}/{path.name}"] = saved_bytes(weights_only(saved))
        if "optimizer" in (carried := portable(saved)):
            resumable[f"{CHECKPOINTS}/{path.name}"] = saved_bytes(carried)
    limit = CARRY_LIMIT_MB * 2**20 - 2**16  # tar and gzip headers; weights barely compress
    volumes: list[dict[str, bytes]] = [{}]
    for name, data in members.items():  # results files first: they are what a session is for
        fits = [v for v in volumes if sum(map(len, v.values())) + len(data) <= limit]
        if not fits and len(volumes) < MAX_VOLUMES and len(data) <= limit:
            volumes.append({})
            fits = volumes[-1:]
        if not fits:
            warn(f"{name} ({len(data) / 2**20:.1f} MB) left out of {archive}: {MAX_VOLUMES} volumes of "
                 f"{CARRY_LIMIT_MB:g} MB (what a lent machine returns) are full; its training is lost with the "
                 f"machine unless it finishes (and is evaluated) within one session")
            continue
        fits[0][name] = data
    for name, data in resumable.items():  # then AdamW's state for unfinished ones, smallest first, where it fits
        home = next((v for v in volumes if name in v), None)
        room = [v for v in volumes if sum(map(len, v.values())) - len(v.get(name, b"")) + len(data) <= limit]
        if home is not None and not room and len(volumes) < MAX_VOLUMES and len(data) <= limit:
            volumes.append({})  # a volume of its own rather than a fresh optimiser on the next machine
            room = volumes[-1:]
        if home is not None and room:
            del home[name]
            room[0][name] = data

    def writer(volume: dict[str, bytes]):
        def write(handle) -> None:
            with tarfile.open(fileobj=handle, mode="w:gz") as tar:
                for name, data in volume.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return write

    for number, volume in enumerate(volumes, start=1):
        write_atomic(volume_path(archive, number), writer(volume))
    for number in range(len(volumes) + 1, MAX_VOLUMES + 1):  # an earlier, larger pack's volumes would unpack too
        volume_path(archive, number).unlink(missing_ok=True)
    return [name for volume in volumes for name in volume]


def is_record(name: str) -> bool:
    path = PurePosixPath(name)
    return path.parts[0] == RESULTS and path.parent.name == "runs" and path.suffix == ".json"


def _better_here(target: Path, arrived: dict) -> bool:
    """Whether `target` already holds a record more complete than `arrived` (`store.completeness`, report.distinct's
    rule: finished training before a paused checkpoint's, then more queries, then the later finish). An
    unreadable target is not better."""
    try:
        return completeness(read_record(target)) > completeness(arrived)
    except MembenchError:
        return False


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's files (folders skipped); MembenchError for anything that is not a results file or checkpoint."""
    files = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if member.isdir() and not path.is_absolute() and ".." not in path.parts:
            continue
        if (not member.isfile() or path.is_absolute() or ".." in path.parts or len(path.parts) < 2
                or path.parts[0] not in (RESULTS, CHECKPOINTS)
                or (path.parts[0] == RESULTS and path.parts[1] == CHECKPOINTS)
                or (path.parts[0] == CHECKPOINTS and (len(path.parts) != 2 or path.suffix != ".pt"))):
            raise MembenchError(f"{archive}: member '{member.name}' is not a results file or checkpoint "
                                f"(expected results/... or checkpoints/<key>.pt); nothing was unpacked")
        files.append(member)
    return files


def read_archive(archive: Path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(member name -> bytes, member name -> record of each run record), every member and record checked;
    MembenchError naming the archive and member otherwise. `unpack` writes nothing before this passes."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            contents = {m.name: tar.extractfile(m).read() for m in _checked_members(tar, archive)}
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"{archive} is not a readable session archive ({type(exc).__name__}: {exc}); "
                            f"carry it back again or run `membench pack` on the machine that made it") from None
    try:
        records = {name: parse_record(data, f"{archive}: member {name}") for name, data in contents.items()
                   if is_record(name)}
        if THROUGHPUT_CSV in contents:
            _check_throughput(contents[THROUGHPUT_CSV], f"{archive}: member {THROUGHPUT_CSV}")
    except MembenchError as exc:
        raise MembenchError(f"{exc}; nothing was unpacked: carry the archive back again or run `membench pack` "
                            "on the machine that made it") from None
    return contents, records


def _check_throughput(data: bytes, label: str) -> None:
    """MembenchError naming `label` unless `data` is a complete throughput CSV (rows `merge` can take)."""
    from membench.throughput import existing_table

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "throughput.csv"
        path.write_bytes(data)
        try:
            existing_table(path)
        except MembenchError as exc:
            reason = str(exc).removeprefix(str(path)).split("; move it aside")[0]
            raise MembenchError(f"{label}{reason}") from None


def _is_curve(name: str) -> bool:
    path = PurePosixPath(name)
    return path.parts[0] == RESULTS and path.parent.name == "training" and path.suffix == ".csv"


def _last_step(data: bytes) -> float:
    """The last step of a training curve's CSV (-1 where it has none or cannot be read: any curve is better)."""
    import pandas as pd

    try:
        steps = pd.to_numeric(pd.read_csv(io.BytesIO(data))["step"])
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return -1.0
    return float(steps.max()) if len(steps) else -1.0


def _curve_kept_because(name: str, target: Path, data: bytes, users: dict[str, list[bool]]) -> str | None:
    """Why the training curve here (`target`) is kept over the archive's `name` (`data`), or None: a curve follows
    the records that use it (kept here when every arriving one is kept out); one no arriving record uses is kept
    where it goes further (sessions unpacked out of order)."""
    if name in users:
        return "the records that use it are kept here" if all(users[name]) else None
    here, there = _last_step(target.read_bytes()), _last_step(data)
    return f"its training goes further (step {here:g} against {there:g})" if here > there else None


def check_targets(archive: Path, contents: dict[str, bytes], root: Path) -> None:
    """MembenchError, before anything is written, where a results file of the archive cannot be written under
    `root` (a folder in its place, or a file in place of one of its folders) or the throughput CSV its rows are
    merged into is unreadable."""
    from membench.throughput import existing_table

    for name in contents:
        if name.startswith(f"{CHECKPOINTS}/"):
            continue
        target = root / name
        blocked = [folder for folder in target.parents if folder.is_relative_to(root) and folder.is_file()]
        if target.is_dir() or blocked:
            what = f"{target} is a folder" if target.is_dir() else f"{blocked[-1]} is a file, not a folder"
            raise MembenchError(f"{archive}: its {name} cannot be written here ({what}); move that aside and unpack "
                                "again; nothing was unpacked")
    if THROUGHPUT_CSV in contents and (root / THROUGHPUT_CSV).is_file():
        try:
            existing_table(root / THROUGHPUT_CSV)
        except MembenchError as exc:
            raise MembenchError(f"{exc} (the archive's rows are merged into it); nothing was unpacked") from None


def unpack(archive: Path, root: Path) -> tuple[list[Path], list[Path], list[str]]:
    """Write `archive`'s results files under the checkout `root` and ship its checkpoints into
    root/results/checkpoints. Returns (results files written, checkpoints shipped, members of checkpoints
    that could not be read and were not shipped)."""
    import pandas as pd

    from membench.throughput import merge

    contents, arriving = read_archive(archive)
    check_targets(archive, contents, Path(root))
    kept_here = {name for name, record in arriving.items()  # records a better one here keeps out
                 if (Path(root) / name).exists() and _better_here(Path(root) / name, record)}
    users: dict[str, list[bool]] = {}  # curve member -> for each arriving record using it: kept out
    for name, record in arriving.items():
        if curve := (record.get("training") or {}).get("curve"):
            users.setdefault(str(PurePosixPath(name).parent.parent / curve), []).append(name in kept_here)
    written: list[Path] = []
    unreadable: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = []
        for name, data in contents.items():
            target = Path(root) / name
            try:
                if name.startswith(f"{CHECKPOINTS}/"):
                    copy = write_atomic(Path(scratch) / target.name, lambda h, d=data: h.write(d))
                    try:
                        read_checkpoint(copy)
                        checkpoints.append(copy)
                    except UNREADABLE as exc:
                        warn(f"{archive}: its {name} is not a readable checkpoint ({type(exc).__name__}): not "
                             f"shipped; the other files are written (rerun the session that made it to train it again)")
                        unreadable.append(name)
                elif name == THROUGHPUT_CSV and target.exists():  # rows merged, not the file replaced
                    merge(target, pd.read_csv(io.BytesIO(data), dtype={"commit": str}).to_dict("records"))
                    written.append(target)
                elif name in kept_here:
                    warn(f"{target} kept over the archive's {name}: "
                         f"{better_because(read_record(target), arriving[name])}")
                elif _is_curve(name) and target.exists() and (why := _curve_kept_because(name, target, data, users)):
                    warn(f"{target} kept over the archive's {name}: {why}")
                else:
                    written.append(write_atomic(target, lambda h, d=data: h.write(d)))
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise MembenchError(f"{archive}: could not write {target} ({type(exc).__name__}: {exc}); written "
                                    f"before it: {len(written)} file(s); fix the cause and unpack again") from None
        shipped = ship_checkpoints(None, Path(scratch), checkpoints, target=Path(root) / RESULTS / CHECKPOINTS)
    return written, shipped, unreadable
