"""A session on a lent machine as one bounded command, and one archive that carries its results home.

Machines with a GPU are lent for minutes and start bare, so each session is one command
(`membench session`, `make gpu-session`): several `membench run` processes side by side on the one
device (processes given the same command share its models out; each stops training when the
session's time is up), then `pack` puts what they made into one .tar.gz

    results/<...>        every file under the results folder written since the session began
                         (records, training curves, throughput rows), at its path in the repository
    checkpoints/<key>.pt every checkpoint of the session's cache written since then, weights only

Here, `unpack` checks every member before writing anything (plain files under those two folders,
no absolute or parent paths), writes the results files into this checkout (the throughput table's
rows merged into the local one) and ships the checkpoints (`runner.ship_checkpoints`: replacing a
shipped one only with one trained further), so the next session's same command resumes from them.
"""
from __future__ import annotations

import io
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Sequence

import torch

from membench.errors import MembenchError
from membench.store import warn, write_atomic
from membench.training import weights_only

RESULTS, CHECKPOINTS = "results", "checkpoints"
CARRY_LIMIT_MB = 16.0  # what a lent machine returns per file
EXIT_PAUSED = 3  # as `membench run`: some training stopped at the time limit
THROUGHPUT_CSV = "results/bench/throughput.csv"  # merged row by row on unpacking


def run_session(runs: Sequence[str], copies: int, train_time_limit_s: float, device: str, cache: Path,
                archive: Path, results_dir: Path, first: Sequence[Sequence[str]] = ()) -> int:
    """Run the membench commands `first` one after another, then start `copies` processes of `membench run
    <args>` for each string of `runs`, all at once, each with the session's device, checkpoint cache and
    training time limit; wait for them, print the end of each log, and pack what was written meanwhile
    into `archive`. Returns 0 when every command finished, 3 when some training paused at the limit, else
    the first other exit status (a failing command of `first` does not keep the runs from starting)."""
    cache = Path(cache)
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    started = time.time()
    statuses = [subprocess.run([sys.executable, "-m", "membench.cli", *command]).returncode for command in first]
    processes = []
    for number, args in enumerate(runs):
        for copy in range(copies):
            log = cache / f"run-{number}-{copy}.log"
            command = [sys.executable, "-m", "membench.cli", "run", *shlex.split(args), "--device", device,
                       "--no-progress", "--checkpoint-dir", str(cache / "checkpoints"),
                       "--train-time-limit", str(train_time_limit_s)]
            with open(log, "wb") as handle:
                processes.append((args, log, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)))
    for args, log, process in processes:
        statuses.append(process.wait())
        tail = log.read_text(errors="replace").splitlines()[-12:]
        print(f"== membench run {args} (exit {statuses[-1]})", *tail, sep="\n", flush=True)
    pack(archive, started, results_dir, cache / "checkpoints")
    failed = [status for status in statuses if status not in (0, EXIT_PAUSED)]
    return failed[0] if failed else (EXIT_PAUSED if EXIT_PAUSED in statuses else 0)


def pack(archive: Path, since: float, results_dir: Path, checkpoint_dir: Path) -> list[str]:
    """Write `archive` (.tar.gz) with the files under `results_dir` and the checkpoints (*.pt, weights
    only) in `checkpoint_dir` modified after `since` (seconds since the epoch); returns the member names."""
    results_dir, checkpoint_dir = Path(results_dir), Path(checkpoint_dir)
    members: dict[str, bytes] = {}
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if path.is_file() and path.stat().st_mtime > since and not any(p.startswith(".") for p in relative.parts):
            members[str(PurePosixPath(RESULTS, *relative.parts))] = path.read_bytes()
    for path in sorted(checkpoint_dir.glob("*.pt")):
        if path.stat().st_mtime > since:
            buffer = io.BytesIO()
            torch.save(weights_only(torch.load(path, map_location="cpu", weights_only=False)), buffer)
            members[f"{CHECKPOINTS}/{path.name}"] = buffer.getvalue()

    def write(handle) -> None:
        with tarfile.open(fileobj=handle, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    size_mb = write_atomic(Path(archive), write).stat().st_size / 2**20
    if size_mb > CARRY_LIMIT_MB:
        warn(f"{archive} is {size_mb:.1f} MB, over the {CARRY_LIMIT_MB:g} MB a lent machine returns per file; "
             f"pack fewer results (an earlier --since)")
    return list(members)


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if (not member.isfile() or path.is_absolute() or ".." in path.parts or len(path.parts) < 2
                or path.parts[0] not in (RESULTS, CHECKPOINTS)
                or (path.parts[0] == CHECKPOINTS and (len(path.parts) != 2 or path.suffix != ".pt"))):
            raise MembenchError(f"{archive}: member '{member.name}' is not a results file or checkpoint "
                                f"(expected results/... or checkpoints/<key>.pt); nothing was unpacked")
    return members


def unpack(archive: Path, root: Path, checkpoint_target: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Write `archive`'s results files under `root` and ship its checkpoints (into `checkpoint_target`,
    default results/checkpoints). Returns (results files written, checkpoints shipped)."""
    from membench.runner import ship_checkpoints

    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = _checked_members(tar, archive)
            contents = {m.name: tar.extractfile(m).read() for m in members}
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"{archive} is not a readable session archive ({type(exc).__name__}: {exc}); "
                            f"carry it back again or run `membench pack` on the machine that made it") from None
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        files: Sequence[Path] = []
        for name, data in contents.items():
            if name.startswith(f"{CHECKPOINTS}/"):
                files = [*files, write_atomic(Path(scratch) / PurePosixPath(name).name, lambda h, d=data: h.write(d))]
            elif name == THROUGHPUT_CSV and (Path(root) / name).exists():  # rows merged, not the file replaced
                import pandas as pd

                from membench.throughput import merge

                merge(Path(root) / name, pd.read_csv(io.BytesIO(data), dtype={"commit": str}).to_dict("records"))
                written.append(Path(root) / name)
            else:
                written.append(write_atomic(Path(root) / name, lambda h, d=data: h.write(d)))
        shipped = ship_checkpoints(None, Path(scratch), files, target=checkpoint_target)
    return written, shipped
