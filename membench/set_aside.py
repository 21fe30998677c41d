"""`membench set-aside`: before a call to a lent machine, the results its session does not need leave the
working tree, so the copy the machine carries (at most 64 MiB) has room for the checkpoints it resumes;
`git checkout -- results` brings them back after the call, before `membench unpack` (which refuses to unpack
over them: the checkout would undo what it writes into files git holds)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Sequence

from membench.checkpoints import readable_checkpoint
from membench.errors import MembenchError
from membench.archive import CHECKPOINTS, RESULTS, is_record
from membench.records import read_record
from membench.suites import SUITES


def deleted_results(root: Path) -> list[str]:
    """The files git holds under `root`/results that are deleted from its working tree (as a set-aside leaves
    them until `git checkout -- results`); none where `root` is no git checkout."""
    try:
        return _git(root, "ls-files", "-z", "--deleted", "--", RESULTS).split("\0")[:-1]
    except (OSError, subprocess.CalledProcessError):
        return []


def _git(root: Path, *args: str) -> str:
    """The output of `git ARGS` in `root`, whatever GIT_* variables this process was given (CalledProcessError
    where it fails, OSError without git)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout


def set_aside(root: Path, keep: Sequence[str]) -> tuple[list[Path], int]:
    """Delete from the checkout `root`'s working tree the results a lent machine's session does not need, so
    the copy it carries (at most 64 MiB) has room for the checkpoints it resumes: every file under results/
    except results/bench, results/reference (the paper's numbers, printed beside a run's) and the folders
    `keep` (existing folders relative to root: the session's --out, whose records make it skip finished runs),
    and of results/checkpoints every finished checkpoint whose records cover every N it was trained on that
    their suites evaluate (its runs are done: `done`). Unfinished checkpoints, and those whose runs lack a
    record, stay. Refused (MembenchError) unless git reports nothing changed under results/, so `git checkout
    -- results` brings every deleted file back (a finished checkpoint that runs of another suite, without
    records, still need: `git checkout -- <it>`). Returns (files deleted, bytes)."""
    root = Path(root)
    if not (root / RESULTS).is_dir():
        raise MembenchError(f"{root} has no {RESULTS}/ folder: give --root the membench checkout a lent machine "
                            "copies")
    try:
        changed = _git(root, "status", "--porcelain", "--", RESULTS)
        tracked = _git(root, "ls-files", "-z", "--", RESULTS).split("\0")[:-1]
    except (OSError, subprocess.CalledProcessError) as exc:
        raise MembenchError(f"{root} is not a git checkout git can read ({exc}); run set-aside in the checkout "
                            f"a lent machine copies") from None
    lines = changed.splitlines()
    if lines and all(line.startswith(" D ") for line in lines):  # deletions only: set aside before, not restored
        raise MembenchError(f"{root}/{RESULTS} has {len(lines)} file(s) deleted from the working tree, as a set-aside "
                            f"leaves it (e.g. {lines[0][3:]}): run `git checkout -- {RESULTS}` first (it brings "
                            "them back), then set aside again; do not commit the deletions")
    if lines:
        raise MembenchError(f"{root}/{RESULTS} has changes git does not hold ({len(lines)} path(s), "
                            f"e.g. {lines[0][3:]}): commit them first, so `git checkout -- "
                            f"{RESULTS}` restores what is set aside")
    def relative(folder: str) -> str:  # an absolute path into the checkout as the root-relative one
        absolute = Path(folder)
        inside = absolute.is_absolute() and absolute.resolve().is_relative_to(root.resolve())
        return absolute.resolve().relative_to(root.resolve()).as_posix() if inside else folder

    kept = [PurePosixPath(os.path.normpath(relative(folder)))
            for folder in (f"{RESULTS}/bench", f"{RESULTS}/reference", *keep)]
    for typed, folder in zip(keep, kept[2:]):
        if not folder.is_relative_to(RESULTS) or folder == PurePosixPath(RESULTS) or not (root / folder).is_dir():
            raise MembenchError(f"--keep {typed}: not a folder under {root}/{RESULTS}; give the session's --out "
                                f"folders, e.g. {RESULTS}/fig3 (a session writing a new folder needs no --keep)")
    evaluated: dict[str, set[int]] = {}  # checkpoint key -> the N its records evaluated
    suites: dict[str, set[str]] = {}     # checkpoint key -> the suites of those records
    try:
        records = [read_record(root / name) for name in tracked if is_record(name)]
    except MembenchError as exc:
        raise MembenchError(f"{exc}; restore it from git (`git checkout -- FILE`), then set aside again") from None
    for record in records:
        if key := (record.get("training") or {}).get("checkpoint_key"):
            evaluated.setdefault(key, set()).add(record["task"]["num_patterns"])
            suites.setdefault(key, set()).add(record["suite"])
    deleted, size = [], 0
    for name in tracked:
        path = PurePosixPath(name)
        if any(path.is_relative_to(folder) for folder in kept):
            continue
        if path.parent == PurePosixPath(RESULTS, CHECKPOINTS) and not done(root / name, evaluated, suites):
            continue
        size += (root / name).lstat().st_size
        (root / name).unlink()
        deleted.append(root / name)
    return deleted, size


def done(path: Path, evaluated: dict[str, set[int]], suites: dict[str, set[str]]) -> bool:
    """Whether the checkpoint at `path` finished its training and records evaluated it at every N it was
    trained on that its records' suites evaluate (a Table 1 checkpoint: each of the five N; one grown through
    N = 2, 8, 32, 64 for Figure 3's 64 images: N = 64, the smaller N being steps of its training, not cells;
    one trained on a single N, or a suite unknown here: a record, or every N it was trained on)."""
    saved = readable_checkpoint(path) if path.stem in evaluated else None
    if saved is None:
        return False
    config = saved.get("config") or {}
    trained = set(config.get("num_patterns") or ())
    if all(name in SUITES for name in suites[path.stem]):
        trained &= set().union(*(SUITES[name].num_patterns for name in suites[path.stem]))
    return saved["step"] >= config.get("steps", float("inf")) and trained <= evaluated[path.stem]
