"""Results store: one JSON record per finished run, written atomically; files shared between processes.

Layout of an output directory:
    runs/<run_id>.json        raw record of one run (per-query errors + metadata; long error lists packed)
    training/<key>.csv        training curve of each meta-trained model
    .locks/<run_id>.lock      held while a process computes that run
Every file (records, curves, checkpoints) is written by `write_atomic`: to a temporary
file named after this host and process and locked by its writer, then renamed, so a killed
writer leaves the old content or the complete new one, and two writers never share a
temporary file. Temporary files no writer holds are removed (`remove_orphans`). A record
that cannot be read (truncated, empty, not a record) is reported by path and counts as
unfinished, so the rerun repairs it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from membench.errors import MembenchError
from membench.records import pack_errors, read_record

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)
ORPHAN_AGE_S = 60.0  # a temporary file no writer holds is an orphan once this old (its writer locks it at once)


def warn(message: str) -> None:
    """One line on stderr for a problem membench handled itself (a file set aside, a run repaired)."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def writable_folder(folder: Path, what: str, fix: str = "give another") -> Path:
    """`folder`, created if absent, after a test that a file can be written in it; MembenchError naming `what`
    (e.g. "--out"), the reason and `fix` otherwise: checked before work whose output would have nowhere to go."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        blocking = next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)
        reason = f"{blocking} is a file" if blocking is not None else exc.strerror or exc
        raise MembenchError(f"{what} {folder} is not a folder membench can write in ({reason}); {fix}") from None
    return folder


def read_table(path: Path, what: str, columns: tuple[str, ...] = (), fix: str = "restore it from git", **read_csv):
    """The CSV at `path` as a DataFrame (`read_csv`: pandas.read_csv's options); MembenchError naming `what` the
    file should be, and `fix`, when it is missing, unreadable or lacks one of `columns`."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, **read_csv)
    except FileNotFoundError:
        raise MembenchError(f"{path} is missing: it should be {what}; {fix}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MembenchError(f"{path} is not {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                            f"{fix}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MembenchError(f"{path} is not {what} (no column {', '.join(missing)}); {fix}")
    return frame


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, then rename it to `path`; the temporary file is
    locked (flock) from its making to its renaming, so `remove_orphans` tells it from a killed writer's. An
    OSError of the temporary file's names `path`, the file the caller asked for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released as the handle closes, after the rename
            os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private to its owner)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):  # the temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # file's, or a write's to its descriptor
        raise
    return path


def no_folder_in_the_way(paths: list[Path]) -> None:
    """MembenchError naming the first of `paths` where a folder stands: checked before a command writes any of a
    set of files (a table's .md, .csv and .tex), so that it writes all of them or none."""
    for path in map(Path, paths):
        if path.is_dir():
            raise MembenchError(f"cannot write {path}: a folder is where membench writes a file; move it away, or "
                                "write somewhere else, then run the command again (nothing was written)")


def write_json_atomic(path: Path, payload: Any) -> Path:
    return write_atomic(path, lambda handle: handle.write(json.dumps(payload, indent=1).encode()))


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the temporary files in `folder` that no writer holds (`write_atomic` locks its own) and that are
    ORPHAN_AGE_S old: a killed writer's, of whatever host or process (a restarted container's reused process
    id, another container's host name), or an older membench's."""
    removed = []
    for path in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        try:
            with open(path, "rb") as handle:
                if time.time() - os.fstat(handle.fileno()).st_mtime < ORPHAN_AGE_S:
                    continue
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while its writer holds it
                path.unlink()
        except OSError:  # held, gone already, or not ours to read or delete: left as it is
            continue
        removed.append(path)
    return removed


def discard_if_unused(root: Path) -> None:
    """Delete the output folder `root` if it holds nothing but free run locks and empty folders: what a command
    that made it and then failed (bad input found only while running) leaves behind."""
    root = Path(root)
    files = [p for p in root.rglob("*") if not p.is_dir()] if root.is_dir() else [root]
    if not all(path.parent == root / ".locks" and path.suffix == ".lock" for path in files):
        return
    for path in files:  # a lock another process holds: its run is under way in this folder
        with file_lock(path, blocking=False) as free:
            if not free:
                return
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if needed); yields False when `blocking` is off and
    another process holds it. The lock dies with its process, so a killed holder never blocks others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ResultsStore:
    """Reads and writes the run records under one output directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.training_dir = self.root / "training"
        for folder in (self.runs_dir, self.training_dir):
            remove_orphans(folder)

    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def has(self, run_id: str) -> bool:
        """True when the complete record of `run_id` is at its path; a corrupt one, or another run's record under
        this run's name (a copy), is reported and counts as unfinished. (Reports read every record whatever its
        file's name: copies of one run count once.)"""
        path = self.record_path(run_id)
        if not path.exists():
            return False
        try:
            held = read_record(path)["run_id"]
        except MembenchError as exc:
            warn(f"{exc}; treating the run as unfinished, it will be computed again and the file replaced")
            return False
        if held != run_id:
            warn(f"record {path} is the record of run {held}, not of {run_id}; treating {run_id} as unfinished, it "
                 "will be computed and the file replaced")
            return False
        return True

    def claim(self, run_id: str, blocking: bool = False):
        """Lock that marks a run as being computed by this process (see `file_lock`)."""
        return file_lock(self.root / ".locks" / f"{run_id}.lock", blocking=blocking)

    def save(self, record: dict[str, Any]) -> Path:
        """Write `record` (long error lists packed: `pack_errors`)."""
        return write_json_atomic(self.record_path(record["run_id"]), {**record, "errors": pack_errors(record["errors"])})

    def records(self) -> list[dict[str, Any]]:
        """All finished records, sorted by file name; MembenchError naming the first unreadable one."""
        if not self.runs_dir.exists():
            return []
        records = []
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                records.append(read_record(path))
            except MembenchError as exc:
                raise MembenchError(f"{exc}; restore it from git, rerun the `membench run` command that made it (it "
                                    "recomputes unreadable runs), or delete the file") from None
        return records
