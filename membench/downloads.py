"""Opt-in download of the image data sets' published files (`membench download`) into the layout
`membench.datasets` reads: Omniglot's two zips as published (no checksum is published for them), CIFAR-10's
tar.gz checked against its published md5, then extracted. Nothing else in membench downloads.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from membench.datasets import CIFAR_DIR, CIFAR_MD5, CIFAR_URL, OMNIGLOT_FILES, OMNIGLOT_URL, load
from membench.errors import DatasetMissing, MembenchError


def _fetch(url: str, target: Path) -> Path:
    """Download `url` to `target` unless it is already there (e.g. fetched by hand; a .zip must then be one)."""
    if target.exists():
        if target.suffix == ".zip" and not zipfile.is_zipfile(target):
            raise DatasetMissing(f"{target} is already there but is not a zip archive; delete it and run the "
                                 f"download again")
        return target
    made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]  # deepest first
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
            expected = response.headers.get("Content-Length")
        if expected is not None and partial.stat().st_size != int(expected):  # a connection closed early
            raise OSError(f"{partial.stat().st_size} of {expected} bytes arrived")
        if target.suffix == ".zip" and not zipfile.is_zipfile(partial):
            raise OSError("what arrived is not a zip archive")
    except (OSError, http.client.HTTPException) as exc:
        partial.unlink(missing_ok=True)
        for folder in made:  # the folders this call made, where they are still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DatasetMissing(f"could not download {url} ({type(exc).__name__}: {exc}); download again, or fetch "
                             f"it by hand and put it at {target}") from None
    os.replace(partial, target)
    return target


def download(name: str, root: Path) -> list[Path]:
    """Fetch a data set's published files into `root` (the layout `load` reads).

    A file already in place is not fetched again (so a hand-downloaded archive is used as
    is). CIFAR-10: the tar.gz is checked against its published md5, then extracted. Omniglot:
    the two zips are fetched as published; no checksum is published for them, so none
    is checked.
    """
    root = Path(root)
    if name not in ("omniglot", "cifar10"):
        raise MembenchError(f"unknown data set '{name}'. Valid: cifar10, omniglot")
    try:
        return _download(name, root)
    except DatasetMissing as exc:
        try:  # what is there already (a subset, say) still serves the runs: say so beside the failure
            there = load(name, root=root).fingerprint()
        except MembenchError:
            raise exc from None
        raise DatasetMissing(f"{exc} (the files already in {root} load as they are: {there})") from None


def _download(name: str, root: Path) -> list[Path]:
    if name == "omniglot":
        return [_fetch(OMNIGLOT_URL.format(name=f), root / "omniglot" / f) for f in OMNIGLOT_FILES]
    archive = _fetch(CIFAR_URL, root / "cifar-10-python.tar.gz")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != CIFAR_MD5:
        raise DatasetMissing(f"{archive} has md5 {digest}, expected {CIFAR_MD5}; delete it and download again")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths out of root
            tar.extractall(root, filter="data")
        else:  # the archive's md5 is the published one, so its members are the published files
            tar.extractall(root)
    return [root / CIFAR_DIR]
