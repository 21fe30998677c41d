"""Results store: one JSON record per finished run, written atomically; files shared between processes.

Layout of an output directory:
    runs/<run_id>.json        raw record of one run (per-query errors + metadata; long error lists packed)
    training/<key>.csv        training curve of each meta-trained model
    .locks/<run_id>.lock      held while a process computes that run
Every file (records, curves, checkpoints) is written by `write_atomic`: to a temporary
file named after this host and process, then renamed, so a killed writer leaves the old
content or the complete new one, and two writers never share a temporary file. Temporary
files whose process is gone are removed (`remove_orphans`). A record that cannot be read
(truncated, empty, not a record) is reported by path and counts as unfinished, so the
rerun repairs it.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from membench.errors import MembenchError
from membench.options import is_int

RECORD_KEYS = ("run_id", "suite", "model", "task", "budget", "seed", "queries", "preset", "options",
               "memory_floats", "errors", "environment", "command", "wall_time_s", "training")
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)
PACK_ERRORS_OVER = 10_000  # a record with more per-query errors stores them packed (Figure 3: 64,000 a point)
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


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
    """Call `write(handle)` on a temporary file beside `path`, then rename it to `path`. An OSError of the
    temporary file's names `path`, the file the caller asked for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private to its owner)
        with os.fdopen(fd, "wb") as handle:
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


def write_json_atomic(path: Path, payload: Any) -> Path:
    return write_atomic(path, lambda handle: handle.write(json.dumps(payload, indent=1).encode()))


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: Path) -> list[Path]:
    """Delete temporary files in `folder` left by dead processes of this host (or in an older naming)."""
    removed = []
    for path in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        match = _TEMP.match(path.name)
        if match and (match["host"] != _HOST or _alive(int(match["pid"]))):
            continue
        path.unlink(missing_ok=True)
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


def pack_errors(errors: list[float]) -> list[float] | dict[str, Any]:
    """Per-query errors as stored: the list itself, or, when longer than PACK_ERRORS_OVER and every value is
    a float32 number (as the tasks compute them), {"float32_zlib_base64": ..., "count": n}: the same
    values, little-endian float32, zlib-compressed, base64: lossless, and about 4 times smaller than the list
    for CIFAR's squared errors, far smaller for Omniglot's whole-pixel counts."""
    if len(errors) <= PACK_ERRORS_OVER:
        return errors
    values = np.asarray(errors, dtype="<f4")
    if not np.array_equal(values.astype(np.float64), np.asarray(errors, dtype=np.float64)):
        return errors
    return {"float32_zlib_base64": base64.b64encode(zlib.compress(values.tobytes(), 9)).decode(), "count": len(errors)}


def unpack_errors(stored: Any) -> Any:
    """The per-query errors of a stored record's `errors` field (see `pack_errors`); other values unchanged."""
    if not isinstance(stored, dict):
        return stored
    values = np.frombuffer(zlib.decompress(base64.b64decode(stored["float32_zlib_base64"], validate=True)), "<f4")
    if values.size != stored["count"]:
        raise ValueError(f"packed errors hold {values.size} values, the record says {stored['count']}")
    if not (np.isfinite(values) & (values >= 0)).all():
        raise ValueError("packed errors hold a value that is not a finite non-negative number")
    return values.astype(np.float64).tolist()


def read_record(path: Path) -> dict[str, Any]:
    """The record at `path`, its errors unpacked; MembenchError naming the file when it is not a complete record."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"record {path} is unreadable ({type(exc).__name__}: {exc})") from None
    return parse_record(text, f"record {path}")


def parse_record(text: str | bytes, name: str) -> dict[str, Any]:
    """A record from its JSON text, its errors unpacked; MembenchError starting with `name` when it is not a
    complete record."""
    try:
        record = json.loads(text)
        packed = isinstance(record, dict) and isinstance(record.get("errors"), dict)  # float32 by construction
        if packed:
            record["errors"] = unpack_errors(record["errors"])
    except (UnicodeDecodeError, json.JSONDecodeError, binascii.Error, zlib.error, KeyError, TypeError,
            ValueError) as exc:
        raise MembenchError(f"{name} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
        raise MembenchError(f"{name} is not a membench record (missing {', '.join(missing)})")
    if not isinstance(record["errors"], list) or not record["errors"]:
        raise MembenchError(f"{name} holds no per-query errors")
    problem = _field_problem(record, check_errors=not packed)
    if problem:
        raise MembenchError(f"{name} is not a membench record ({problem})")
    return record


def completeness(record: dict[str, Any]) -> tuple[bool, int, str]:
    """How complete a record is, to keep the better of two of one run or cell: whether its model's training
    was finished (not a paused checkpoint's, `--no-train`), then its queries, then its finish."""
    return ((record.get("training") or {}).get("finished") is not False, len(record["errors"]),
            record.get("finished_at", ""))


def better_because(kept: dict[str, Any], other: dict[str, Any]) -> str:
    """Why `completeness` ranks `kept` above `other`, in words ('it holds more queries', …)."""
    reasons = ("its model's training finished, the other's checkpoint was paused", "it holds more queries",
               "it finished later")
    return next(reason for reason, a, b in zip(reasons, completeness(kept), completeness(other)) if a != b)


def _field_problem(record: dict[str, Any], check_errors: bool = True) -> str | None:
    """What is wrong with the fields the reports group, sum and print, or None (`check_errors`: each error's
    type too, needless where they were unpacked from float32)."""
    task, environment = record["task"], record["environment"]
    if (not isinstance(task, dict) or not isinstance(task.get("kind"), str) or not is_int(task.get("num_patterns"))
            or task["num_patterns"] < 1):
        return "task needs a kind and a positive whole num_patterns"
    if not isinstance(environment, dict) or not isinstance(environment.get("device"), str):
        return "environment needs a device"
    for name in ("device_name", "torch", "membench", "git_commit"):
        if not isinstance(environment.get(name), (str, type(None))):
            return f"environment's {name} is not a string"
    sizes = {"binary": ("dim", "erased")}.get(task["kind"], ("image_size", "block"))
    if not all(is_int(task.get(name)) and task[name] >= 0 for name in sizes):
        return f"a {task['kind']} task needs whole numbers {' and '.join(sizes)}"
    if len(record["errors"]) % task["num_patterns"]:
        return f"errors holds {len(record['errors'])} values, not whole episodes of {task['num_patterns']} queries"
    training = record.get("training")
    if not isinstance(training, (dict, type(None))):
        return "training is neither a mapping nor null"
    if training is not None and not (isinstance(training.get("checkpoint_key"), str)
                                     and isinstance(training.get("curve"), str)
                                     and isinstance(training.get("config"), dict)):
        return "training needs a checkpoint_key, a curve (strings) and a config (a mapping)"
    if training is not None and not nonnegative_number(training.get("train_time_s")):
        return "training's train_time_s is not a number of seconds"
    if not isinstance((training or {}).get("finished", True), bool):
        return "training's finished is neither true nor false"
    now = (training or {}).get("trained_by_this_run", {"steps": 0, "train_time_s": 0})
    if not (isinstance(now, dict) and is_int(now.get("steps")) and now["steps"] >= 0
            and nonnegative_number(now.get("train_time_s"))):
        return "training's trained_by_this_run is not {steps, train_time_s}"
    history = (training or {}).get("history")
    if history is not None and not list_of_mappings(history):
        return "training's history is not a list of stretches"
    preset_config = record.get("preset_config")
    if preset_config is not None and not (isinstance(preset_config, dict)
                                          and isinstance(preset_config.get("model"), dict)
                                          and isinstance(preset_config.get("train"), dict)):
        return "preset_config needs a model and a train mapping"
    split = record.get("train_split")
    if split is not None and not (isinstance(split, dict) and isinstance(split.get("batch_errors"), list)
                                  and all(nonnegative_number(e) for e in split["batch_errors"])):
        return "train_split needs batch_errors, a list of finite non-negative numbers"
    for name in ("budget", "seed", "queries", "memory_floats"):
        if not is_int(record[name]):
            return f"{name} is not a whole number"
    for name in ("run_id", "suite", "model", "preset", "command"):
        if not isinstance(record[name], str):
            return f"{name} is not a string"
    if not isinstance(record["wall_time_s"], (int, float)) or isinstance(record["wall_time_s"], bool):
        return "wall_time_s is not a number"
    if not isinstance(record.get("finished_at", ""), str):
        return "finished_at is not a string"
    if not isinstance(record["options"], dict):
        return "options is not a mapping"
    if check_errors and not all(nonnegative_number(e) for e in record["errors"]):
        return "errors holds a value that is not a finite non-negative number"
    return None


def list_of_mappings(value: Any) -> bool:
    """A list of dicts (a training curve's rows, a history's stretches)."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def nonnegative_number(value: Any) -> bool:
    """A finite non-negative int or float (not a bool): seconds, an error."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


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
