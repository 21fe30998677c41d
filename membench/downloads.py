"""Opt-in download of the image data sets' published files (`membench download`) into the layout
`membench.datasets` reads: Omniglot's two zips as published (no checksum is published for them), CIFAR-10's
tar.gz checked against its published md5, then extracted. Nothing else in membench downloads.

Nothing half-made is left where the loaders look: a file arrives as `<name>.part` and takes its name only once
whole (and, for CIFAR-10, with the published md5); the archive is extracted beside the data folder and swapped
in once every batch is there. An interrupted or failed download removes what it had begun.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from membench.datasets import (CIFAR_DIR, CIFAR_MD5, CIFAR_TEST, CIFAR_TRAIN, CIFAR_URL, OMNIGLOT_FILES, OMNIGLOT_URL,
                               load)
from membench.errors import DatasetMissing, Interrupted, MembenchError

LOCAL_FIXES = {errno.ENOSPC: "free disk space or give another --data-dir",
               errno.EROFS: "give a --data-dir you can write to", errno.EACCES: "give a --data-dir you can write to",
               errno.EPERM: "give a --data-dir you can write to"}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _what_arrived(path: Path) -> str:
    """A few words on a file that is not what was asked for: its size, and whether it is a web page."""
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip().lower()
    page = start.startswith((b"<!doctype html", b"<html"))
    return f"{path.stat().st_size} bytes" + (", a web page" if page else "")


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise OSError(f"it is not a zip archive ({_what_arrived(path)})")


def _check_cifar(path: Path) -> None:
    digest = _md5(path)
    if digest != CIFAR_MD5:
        raise OSError(f"it has md5 {digest}, not the published {CIFAR_MD5} ({_what_arrived(path)})")


def _fetch(url: str, target: Path, check: Callable[[Path], None], progress: bool = False) -> Path:
    """Download `url` to `target`, whole and passing `check` (which raises OSError), unless it is already there
    (e.g. fetched by hand: it must pass `check` too). `progress`: a bar on stderr of the bytes arrived (of the
    server's Content-Length where it sends one)."""
    if target.exists():
        try:
            check(target)
        except OSError as exc:
            raise DatasetMissing(f"{target} is already there, but {exc}; delete it and run the download "
                                 "again") from None
        return target
    made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]  # deepest first
    partial = target.with_suffix(target.suffix + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            expected = response.headers.get("Content-Length")
            with _bar(target.name, expected, progress) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    bar.update(len(chunk))
        if expected is not None and partial.stat().st_size != int(expected):  # a connection closed early
            raise OSError(f"{partial.stat().st_size} of {expected} bytes arrived")
        check(partial)
        os.replace(partial, target)
    except BaseException as exc:
        _remove([partial], made)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: the download of {url} was stopped and what had arrived removed; rerun "
                              "the same command to download it") from None
        if not isinstance(exc, (OSError, http.client.HTTPException)):
            raise
        local = LOCAL_FIXES.get(getattr(exc, "errno", None))  # this machine's disk, not the network
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # urllib's messages may span lines
        raise DatasetMissing(f"could not download {url} into {target} ({reason}); "
                             + (local if local else f"download again, or fetch it by hand and put it at {target}")
                             ) from None
    return target


def _bar(name: str, expected: str | None, shown: bool):
    """A tqdm byte counter for one file (a no-op when not `shown`)."""
    from tqdm.auto import tqdm

    total = int(expected) if expected is not None and expected.isdigit() else None
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=not shown)


def _remove(files: list[Path], made: list[Path]) -> None:
    """A failed download's leftovers: the files it wrote, and the folders it made where they are empty again."""
    for file in files:
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def download(name: str, root: Path, progress: bool = False) -> list[Path]:
    """Fetch a data set's published files into `root` (the layout `load` reads).

    A file already in place is not fetched again (so a hand-downloaded archive is used as
    is, once it passes the same check). CIFAR-10: the tar.gz is checked against its published md5,
    then extracted. Omniglot: the two zips are fetched as published; no checksum is published for
    them, so only their being zip archives is checked. `progress`: a bar on stderr per file fetched.
    """
    root = Path(root)
    if name not in ("omniglot", "cifar10"):
        raise MembenchError(f"unknown data set '{name}'. Valid: cifar10, omniglot")
    try:
        return _download(name, root, progress)
    except KeyboardInterrupt:  # outside a fetch or an extraction (checking a file in place): nothing changed
        raise Interrupted(f"interrupted: the download of {name} was stopped; {root} is as it was") from None
    except DatasetMissing as exc:
        try:  # what is there already (a subset, say) still serves the runs: say so beside the failure
            there = load(name, root=root).fingerprint()
        except MembenchError:
            raise exc from None
        raise DatasetMissing(f"{exc} (the files already in {root} load as they are: {there})") from None


def _download(name: str, root: Path, progress: bool) -> list[Path]:
    if name == "omniglot":  # both zips or neither: the first alone would change the split the loader makes
        folder = root / "omniglot"
        made = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
        added: list[Path] = []
        try:
            for file in OMNIGLOT_FILES:
                target = folder / file
                there = target.exists()
                _fetch(OMNIGLOT_URL.format(name=file), target, _check_zip, progress)
                added += [] if there else [target]
        except BaseException:
            _remove(added, made)
            raise
        return [folder / file for file in OMNIGLOT_FILES]
    return [_extract_cifar(_fetch(CIFAR_URL, root / "cifar-10-python.tar.gz", _check_cifar, progress), root)]


def _extract_cifar(archive: Path, root: Path) -> Path:
    """Extract the checked archive beside `root/CIFAR_DIR`, then swap it in whole (files of yours in that folder
    that the archive lacks are carried over): an interrupted or failed extraction never leaves a folder of
    mixed or missing batches where the loader looks. When every batch already equals the archive's, nothing is
    extracted."""
    from membench.store import file_lock

    target = root / CIFAR_DIR
    staging, old = root / f".{CIFAR_DIR}.extracting", root / f".{CIFAR_DIR}.replaced"
    with file_lock(root / f".{CIFAR_DIR}.lock"):  # one extraction at a time into this folder
        try:
            if old.exists() and not target.exists():  # a swap stopped halfway: the folder before it comes back
                os.replace(old, target)
            return _swap_in(archive, target, staging, old)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: the extraction of {archive} was stopped; {target} is whole (as it was, "
                              "or the archive's if the swap had happened); rerun the same command to extract it"
                              ) from None
        except (OSError, tarfile.TarError) as exc:
            fix = LOCAL_FIXES.get(getattr(exc, "errno", None), "run the download again")
            raise DatasetMissing(f"could not extract {archive} into {root} ({type(exc).__name__}: {exc}); "
                                 f"{fix}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():  # the new batches are in place: the old ones go
                shutil.rmtree(old, ignore_errors=True)


def _same_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bool:
    """Whether `path` holds the archive member's bytes."""
    if not path.is_file() or path.stat().st_size != member.size:
        return False
    with tar.extractfile(member) as theirs, open(path, "rb") as ours:
        while chunk := theirs.read(1 << 20):
            if ours.read(len(chunk)) != chunk:
                return False
    return True


def _swap_in(archive: Path, target: Path, staging: Path, old: Path) -> Path:
    """`_extract_cifar`'s work, under its lock and its handling of failures."""
    root = target.parent
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        if all(_same_file(tar, m, root / m.name) for m in members):
            return target  # extracted before (a rerun): nothing to do
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths out of root
            tar.extractall(staging, filter="data")
        else:  # the archive's md5 is the published one, so its members are the published files
            tar.extractall(staging)
    new = staging / CIFAR_DIR
    missing = [f for f in (*CIFAR_TRAIN, CIFAR_TEST) if not (new / f).is_file()]
    if missing:
        raise DatasetMissing(f"{archive} lacks {', '.join(missing)}; delete it and run the download again")
    if target.exists():
        for yours in target.iterdir():
            if not (new / yours.name).exists():
                (shutil.copytree if yours.is_dir() else shutil.copy2)(yours, new / yours.name)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    return target
