"""Image loaders on fixtures in the published formats (Omniglot zips, CIFAR-10 pickles)."""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shared_path
from membench import datasets, downloads
from membench.errors import DatasetMissing, MembenchError


# --- fixture writers (also used by test_image_tasks.py and test_figure3.py) ------------

def _png(ink: np.ndarray) -> bytes:
    """A 105x105 1-bit PNG as published: True = white background, False = ink."""
    buffer = io.BytesIO()
    Image.fromarray(~ink.astype(bool)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_omniglot_zip(path: Path, alphabets: dict[str, int], drawers: int = 3, seed: int = 0) -> Path:
    """A zip laid out as images_background.zip: <root>/<Alphabet>/characterNN/<id>_<drawer>.png.

    Every image is a distinct random pattern of 21x21 ink squares on a 5x5 grid.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        root = path.stem
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                for d in range(1, drawers + 1):
                    cells = rng.random((5, 5)) < 0.4
                    ink = np.kron(cells, np.ones((21, 21), dtype=bool))
                    archive.writestr(f"{root}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png", _png(ink))
    return path


def write_cifar(folder: Path, per_batch: int = 14, test: int = 70, bytes_keys: bool = False, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with data_batch_1..5 and test_batch of random uint8 images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        batch = {"batch_label": name, "labels": rng.integers(0, 10, count).tolist(),
                 "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def write_fixture_data(root: Path) -> Path:
    """A data dir with omniglot/ (2 small background zips) and cifar-10-batches-py/."""
    write_omniglot_zip(root / "omniglot" / "images_background_small1.zip", {"Greek": 10, "Runic": 10}, drawers=5)
    write_omniglot_zip(root / "omniglot" / "images_background_small2.zip", {"Greek": 10, "Thai": 10}, drawers=5, seed=1)
    write_cifar(root / "cifar-10-batches-py")
    return root


# --- Omniglot ----------------------------------------------------------------------

def test_omniglot_inverts_resizes_and_binarises(tmp_path):
    ink = np.zeros((105, 105), dtype=bool)
    ink[:52] = True                                   # top 52 of 105 rows are ink
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("images_background/A/character01/0001_01.png", _png(ink))
        archive.writestr("images_background/A/character02/0002_01.png", _png(np.zeros((105, 105), bool)))
        for c in range(3, 6):
            archive.writestr(f"images_background/A/character{c:02d}/{c:04d}_01.png", _png(ink))
    with zipfile.ZipFile(tmp_path / "images_background.zip") as archive:
        assert Image.open(io.BytesIO(archive.read("images_background/A/character01/0001_01.png"))).mode == "1"
    data = datasets.load_omniglot(tmp_path)
    assert data.train.pixels.shape == (4, 1, 32, 32) and data.train.pixels.dtype == torch.uint8
    half = data.train.images(torch.tensor(0))[0]
    assert (half[:16] == 1).all() and (half[16:] == 0).all()      # ink = 1, output row 15 is 85% ink
    assert data.train.images(torch.tensor(1)).sum() == 0          # blank page: no ink
    assert data.classes[data.test.labels[0]] == "A/character05"   # every 5th character is held out


def test_an_omniglot_image_as_high_as_the_size_but_not_as_wide_is_resized(tmp_path):
    """A 32-high, 40-wide PNG (the Omniglot zips' are 105 square) is resized like any other, not stacked as it is."""
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        for c in range(1, 6):
            shape = (32, 40) if c == 1 else (105, 105)
            archive.writestr(f"images_background/A/character{c:02d}/{c:04d}_01.png", _png(np.zeros(shape, bool)))
    data = datasets.load_omniglot(tmp_path)
    assert data.train.pixels.shape == (4, 1, 32, 32)


def test_omniglot_holdout_split_is_by_character_and_deduplicated(tmp_path):
    root = write_fixture_data(tmp_path)
    data = datasets.load_omniglot(root)
    assert len(data.classes) == 30                                # Greek is in both zips: read once
    train_chars = {data.classes[i] for i in data.train.labels.tolist()}
    test_chars = {data.classes[i] for i in data.test.labels.tolist()}
    assert not train_chars & test_chars
    assert test_chars == {f"{a}/character{c:02d}" for a in ("Greek", "Runic", "Thai") for c in (5, 10)}
    assert (len(data.train), len(data.test)) == (24 * 5, 6 * 5)
    assert data.fingerprint() == ("images_background_small1.zip+images_background_small2.zip (train 120, test 30)")
    assert datasets.load_omniglot(root) is data                   # cached


def test_a_character_in_two_zips_keeps_the_images_of_both(tmp_path):
    """Zip 1 holds drawers 1-3 of each Greek character, zip 2 drawers 1-5: each image file is read once (drawers 1-3
    from zip 1) and each character has all five, not only the two that zip 2 added."""
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small1.zip", {"Greek": 5}, drawers=3)
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small2.zip", {"Greek": 5}, drawers=5, seed=1)
    data = datasets.load_omniglot(tmp_path)
    assert (len(data.train), len(data.test)) == (4 * 5, 5)
    first = datasets.load_omniglot(write_omniglot_zip(tmp_path / "one" / "omniglot" / "images_background.zip",
                                                      {"Greek": 5}, drawers=3).parent.parent)
    assert torch.equal(data.test.pixels[:3], first.test.pixels)  # drawers 1-3: zip 1's images


def test_omniglot_evaluation_zip_is_the_test_split(tmp_path):
    write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", {"Latin": 4}, drawers=2)
    write_omniglot_zip(tmp_path / "omniglot" / "images_evaluation.zip", {"Atemayar": 3}, drawers=2, seed=1)
    data = datasets.load_omniglot(tmp_path, image_size=28)
    assert data.train.pixels.shape == (8, 1, 28, 28) and data.test.pixels.shape == (6, 1, 28, 28)
    assert {data.classes[i].split("/")[0] for i in data.test.labels.tolist()} == {"Atemayar"}


def test_an_omniglot_zip_with_no_images_is_named_not_skipped(tmp_path):
    """A valid zip holding no <alphabet>/<character>/<image>.png (a README only, say) would leave its alphabets
    out of the data set unnoticed: it is named instead."""
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small1.zip", {"Latin": 4}, drawers=2)
    with zipfile.ZipFile(tmp_path / "omniglot" / "images_background_small2.zip", "w") as archive:
        archive.writestr("README.txt", "no images here")
    with pytest.raises(DatasetMissing, match=r"images_background_small2.zip holds no Omniglot images .*; restore it from "
                                             r"where it came \(the small zips are not downloaded\), or .*changes the "
                                             r"split to theirs"):
        datasets.load_omniglot(tmp_path)


def test_a_broken_published_zip_is_downloaded_again_and_a_macos_resource_fork_is_no_image(tmp_path):
    """The published zips' fix is the download; a zip re-packed on macOS carries __MACOSX/._NAME.png resource forks,
    which are not images and are skipped, not reported as corruption."""
    path = write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", {"Latin": 5}, drawers=2)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("__MACOSX/images_background/Latin/character01/._0001_01.png", b"\x00\x05\x16\x07 fork")
    assert len(datasets.load_omniglot(tmp_path).train) == 8  # characters 1-4, two drawers each
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetMissing, match=r"images_background.zip is corrupt or truncated .*delete it and download "
                                             r"it again \(`membench download omniglot --data-dir "):
        datasets.load_omniglot(tmp_path)


def test_missing_data_names_the_download(tmp_path):
    with pytest.raises(DatasetMissing, match="brendenlake/omniglot/raw/master/python/images_background.zip"):
        datasets.load_omniglot(tmp_path)
    with pytest.raises(DatasetMissing, match="cifar-10-python.tar.gz"):
        datasets.load_cifar10(tmp_path)
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetMissing, match=r"lacks data_batch_3; extract it again \(`membench download cifar10 "):
        datasets.load_cifar10(tmp_path)


def test_download_error_path_is_a_clear_message(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(downloads.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetMissing, match="could not download .*cifar-10-python.tar.gz"):
        downloads.download("cifar10", tmp_path)
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(DatasetMissing, match="could not download .*images_background.zip"):
        downloads.download("omniglot", tmp_path / "new" / "data")  # the folders it made go again
    assert list(tmp_path.iterdir()) == []


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_data_dir_override", None)
    monkeypatch.delenv("MEMBENCH_DATA", raising=False)
    assert datasets.data_dir() == Path("data")
    monkeypatch.setenv("MEMBENCH_DATA", "")  # set but empty: as unset (not the working directory)
    assert datasets.data_dir() == Path("data")
    monkeypatch.setenv("MEMBENCH_DATA", str(tmp_path))
    assert datasets.data_dir() == tmp_path
    datasets.set_data_dir(tmp_path / "x")
    assert datasets.data_dir() == tmp_path / "x"
    datasets.set_data_dir(None)
    assert datasets.data_dir() == tmp_path


# --- CIFAR-10 ----------------------------------------------------------------------

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_planes_scale_and_keys(tmp_path, bytes_keys):
    folder = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=2, test=3, bytes_keys=bytes_keys)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    raw = batch[b"data" if bytes_keys else "data"][0]
    data = datasets.load_cifar10(tmp_path)
    assert data.train.pixels.shape == (10, 3, 32, 32) and data.test.pixels.shape == (3, 3, 32, 32)
    image = data.test.images(torch.tensor(0))
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert torch.equal(image[1, 0], torch.from_numpy(raw[1024:1056] / 255.0).float())  # G plane, first row
    assert torch.equal(image[2, 31, 31], torch.tensor(raw[3071] / 255.0, dtype=torch.float32))
    assert data.test.labels.tolist() == batch[b"labels" if bytes_keys else "labels"]


@pytest.mark.parametrize("labels, fragment", [
    (lambda labels: [label + 10 for label in labels], "holds labels that are not classes 0..9 (of type int64, from 1"),
    (lambda labels: [label + 0.5 for label in labels], "holds labels that are not classes 0..9 (of type float64"),
    (lambda labels: [[label] for label in labels], "labels of shape (3, 1), expected (M, 3072) and (M,)"),
])
def test_cifar_labels_that_are_not_classes_are_refused(tmp_path, labels, fragment):
    """A damaged batch file whose pixels survive but whose labels do not is named, not loaded as the data set."""
    folder = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=2, test=3)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"] = labels(batch["labels"])
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetMissing, match=re.escape(fragment) + ".*--data-dir"):
        datasets.load_cifar10(tmp_path)


def test_cifar_resize_stays_on_the_8_bit_grid(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", per_batch=2, test=3)
    small = datasets.load_cifar10(tmp_path, image_size=16)
    full = datasets.load_cifar10(tmp_path)
    assert small.test.pixels.shape == (3, 3, 16, 16)
    expected = full.test.pixels[:, :, :2, :2].float().mean(dim=(2, 3)).round()
    assert torch.equal(small.test.pixels[:, :, 0, 0].float(), expected)
    assert not (small.test.images(torch.arange(3)) == 0.5).any()


# --- the shared subsets of the real data (skipped where ../shared is absent) ---------

def test_shared_real_data_loads():
    root = shared_path("data")
    shared_path("data", "omniglot")  # a partial copy skips too
    shared_path("data", "cifar-10-batches-py")
    omniglot = datasets.load_omniglot(root)
    cifar = datasets.load_cifar10(root)
    assert (len(omniglot.train), len(omniglot.test)) == (3940, 900)
    assert (len(cifar.train), len(cifar.test)) == (4660, 846)
    train_chars = set(omniglot.train.labels.tolist())
    assert not train_chars & set(omniglot.test.labels.tolist())
    ink = omniglot.train.pixels.float().mean().item()
    assert 0.05 < ink < 0.15, f"ink fraction {ink}"


def test_download_uses_a_hand_fetched_archive_and_checks_md5(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DatasetMissing, match="cifar-10-python.tar.gz is already there, but it has md5 [0-9a-f]+, not "
                                             "the published c58f30108f718f92721af3b95e74349a .15 bytes."):
        downloads.download("cifar10", tmp_path)


def test_download_refuses_a_hand_fetched_omniglot_file_that_is_no_zip(tmp_path):
    """Omniglot publishes no checksum, but a file in the archive's place must at least be a zip."""
    (tmp_path / "omniglot").mkdir()
    for name in datasets.OMNIGLOT_FILES:
        (tmp_path / "omniglot" / name).write_bytes(b"junk")
    with pytest.raises(DatasetMissing, match="images_background.zip is already there, but it is not a zip archive "
                                             r"\(4 bytes\); delete it and run the download again"):
        downloads.download("omniglot", tmp_path)


class _Served(io.BytesIO):
    """What urlopen returns for a server sending `body` (its Content-Length right), then `fail` if given."""

    def __init__(self, body: bytes, fail: BaseException | None = None):
        super().__init__(body)
        self.headers, self.fail = {"Content-Length": str(len(body))}, fail

    def read(self, size=-1):
        if self.fail is not None and self.tell() > 0:
            raise self.fail
        return super().read(size)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


def _cifar_archive(tmp_path: Path, monkeypatch, per_batch: int) -> bytes:
    """A tar.gz of a fixture cifar-10-batches-py/ whose md5 the download takes for the published one."""
    import hashlib
    import tarfile

    folder = write_cifar(tmp_path / f"made-{per_batch}" / datasets.CIFAR_DIR, per_batch=per_batch)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=datasets.CIFAR_DIR)
    monkeypatch.setattr(downloads, "CIFAR_MD5", hashlib.md5(buffer.getvalue()).hexdigest())
    return buffer.getvalue()


def test_a_download_shows_its_bytes_only_when_asked(tmp_path, monkeypatch, capsys):
    """With progress, a bar on stderr names the file and counts its bytes to the server's Content-Length; the
    file arrives the same either way, and without progress nothing is printed."""
    archive = _cifar_archive(tmp_path, monkeypatch, per_batch=2)
    monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: _Served(archive))
    downloads.download("cifar10", tmp_path / "shown", progress=True)
    from tqdm import tqdm

    shown, size = capsys.readouterr().err, tqdm.format_sizeof(len(archive), divisor=1024)
    assert "cifar-10-python.tar.gz: 100%" in shown and f"{size}/{size}" in shown
    downloads.download("cifar10", tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    assert ((tmp_path / "shown" / "cifar-10-python.tar.gz").read_bytes()
            == (tmp_path / "quiet" / "cifar-10-python.tar.gz").read_bytes() == archive)


def test_a_cifar_download_is_checked_before_it_takes_its_name_and_swapped_in_whole(tmp_path, monkeypatch):
    """A web page served with status 200 in the archive's place is refused and not kept (a rerun downloads
    again); a good archive replaces a subset's batches whole; an extraction stopped midway (Ctrl-C) or failing
    (a full disk) leaves the batches there as they were, and no staging folder."""
    root = tmp_path / "data"
    write_cifar(root / datasets.CIFAR_DIR, per_batch=3)  # a subset in place
    before = datasets.load("cifar10", root=root).fingerprint()
    archive = _cifar_archive(tmp_path, monkeypatch, per_batch=5)
    monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: _Served(b"<html>busy</html>"))
    with pytest.raises(DatasetMissing, match=r"could not download .*has md5 [0-9a-f]+, not the published .*"
                                             r"\(17 bytes, a web page\).*load as they are"):
        downloads.download("cifar10", root)
    assert sorted(p.name for p in root.iterdir()) == [datasets.CIFAR_DIR]  # nothing kept under the archive's name

    import tarfile
    extract = tarfile.TarFile.extractall
    for stop, error in ((KeyboardInterrupt(), "interrupted: the extraction .* was stopped"),
                        (OSError(28, "No space left on device"), "free disk space or give another --data-dir")):
        def halfway(self, path, *args, stop=stop, **kwargs):
            extract(self, path, *args, members=self.getmembers()[:3], **kwargs)  # some batches, then it stops
            raise stop

        monkeypatch.setattr(tarfile.TarFile, "extractall", halfway)
        monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: _Served(archive))
        with pytest.raises(MembenchError, match=error):
            downloads.download("cifar10", root)
        assert datasets.load("cifar10", root=root).fingerprint() == before  # the subset, whole, as it was
        assert _names(root) == [datasets.CIFAR_DIR, "cifar-10-python.tar.gz"]
    monkeypatch.setattr(tarfile.TarFile, "extractall", extract)
    (root / datasets.CIFAR_DIR / "my_notes.txt").write_text("mine")
    assert downloads.download("cifar10", root) == [root / datasets.CIFAR_DIR]  # the kept archive, extracted
    assert datasets.load("cifar10", root=root).fingerprint() != before
    assert _names(root) == [datasets.CIFAR_DIR, "cifar-10-python.tar.gz"]
    assert (root / datasets.CIFAR_DIR / "my_notes.txt").read_text() == "mine"  # a file of yours is carried over

    def never(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(tarfile.TarFile, "extractall", never)  # a rerun: the batches are the archive's already
    assert downloads.download("cifar10", root) == [root / datasets.CIFAR_DIR]
    os.replace(root / datasets.CIFAR_DIR, root / f".{datasets.CIFAR_DIR}.replaced")  # a swap killed halfway
    assert downloads.download("cifar10", root) == [root / datasets.CIFAR_DIR]  # the folder back, then as above
    assert (root / datasets.CIFAR_DIR / "my_notes.txt").exists() and len(_names(root)) == 2
    batch = root / datasets.CIFAR_DIR / "data_batch_1"  # of the right size, other bytes (zeroed by a crash):
    batch.write_bytes(bytes(batch.stat().st_size))  # extracted again
    monkeypatch.setattr(tarfile.TarFile, "extractall", extract)
    assert downloads.download("cifar10", root) == [root / datasets.CIFAR_DIR]
    assert datasets.load("cifar10", root=root).fingerprint() != before and batch.read_bytes()[:2] == b"\x80\x02"


def _names(root: Path) -> list[str]:
    """What a data folder holds but the download's lock file."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_a_download_stopped_or_out_of_disk_leaves_nothing_and_says_which(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) during a fetch: exit as interrupted, the .part and the folders it made removed; a
    full disk names that fix, not "download again"."""
    from membench.errors import Interrupted

    for fail, error, kind in ((KeyboardInterrupt(), "interrupted: the download of .* was stopped", Interrupted),
                              (OSError(28, "No space left on device"), "free disk space or give another --data-dir",
                               DatasetMissing)):
        monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, fail=fail, **k: _Served(b"PK" * 10, fail))
        with pytest.raises(kind, match=error):
            downloads.download("omniglot", tmp_path / "new" / "data")
        assert list(tmp_path.iterdir()) == []

    root = tmp_path / "data"  # the first zip whole, the second cut: neither is kept (the first alone would
    (root / "omniglot").mkdir(parents=True)  # change the split of the small zips already there)
    (root / "omniglot" / "images_background_small1.zip").write_bytes(b"as it was")
    zips = iter([_Served(_zip_bytes()), _Served(b"PK" * 10, OSError("connection reset"))])
    monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: next(zips))
    with pytest.raises(DatasetMissing, match="images_evaluation.zip"):
        downloads.download("omniglot", root)
    assert [p.name for p in (root / "omniglot").iterdir()] == ["images_background_small1.zip"]
    zips = iter([_Served(_zip_bytes()), _Served(b"PK" * 10, OSError("connection reset"))])  # into new folders:
    with pytest.raises(DatasetMissing, match="images_evaluation.zip"):  # they go again
        downloads.download("omniglot", tmp_path / "new" / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/b/c.png", b"")
    return buffer.getvalue()
