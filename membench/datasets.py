"""Image data sets read from their published files: Omniglot zips and CIFAR-10 pickles.

Where the files are: `data_dir()`, i.e. the directory given by `set_data_dir` (the CLI's
`--data-dir`), else $MEMBENCH_DATA, else ./data. The directory is read unchanged:

    <data dir>/omniglot/images_background.zip     (or images_background_small1.zip, ..._small2.zip)
    <data dir>/omniglot/images_evaluation.zip      (optional)
    <data dir>/cifar-10-batches-py/data_batch_1..5, test_batch
(the zips and `cifar-10-batches-py/` may also sit directly in the data dir).

Omniglot: zip layout `<root>/<Alphabet>/characterNN/<id>_<drawer>.png`, 105x105 1-bit PNGs
with True = white background. Each image is inverted (ink = 1), resized to
`image_size` x `image_size` with PIL's BOX filter (the equally weighted mean of the source
pixels whose centres lie in the target pixel's box: no partial overlaps, so not an exact area
average) and binarised: a pixel is ink when that mean is at least half (8-bit value >= 128). At 32x32
this gives 8.4% ink pixels on the shared subsets (7.6% of the 105x105 source pixels of small1).
Split, by character (the paper does not give one): with images_evaluation.zip present,
train = every background zip, test = the evaluation zip (the published split, disjoint
alphabets). Otherwise the characters found are pooled and, within each alphabet in sorted
order, every 5th character (index 4, 9, ...) is held out as test. Characters found in
several zips (Greek and Latin are in both small background zips) are read once: each image
file once, a character's images from every zip that holds them pooled.

CIFAR-10: pickles with `data` (uint8 N x 3072: R, G, B planes, row-major) and `labels`;
keys may be str or bytes. Train = data_batch_1..5, test = test_batch. Values k/255 in
[0, 1], shape (3, 32, 32); at another `image_size` they are area-averaged and quantised back
to multiples of 1/255, so no pixel ever equals the 0.5 fill value of corrupted blocks.

Decoded splits are cached in memory per (directory, size, file stamps).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from membench.errors import DatasetMissing, MembenchError

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
OMNIGLOT_FILES = ("images_background.zip", "images_evaluation.zip")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
HOLDOUT_EVERY = 5  # without images_evaluation.zip: every 5th character of each alphabet is test

_data_dir_override: Path | None = None
_cache: dict[tuple, "ImageDataset"] = {}


def set_data_dir(path: Path | str | None) -> None:
    """Use `path` as the data directory (None: back to $MEMBENCH_DATA or ./data)."""
    global _data_dir_override
    _data_dir_override = Path(path).expanduser() if path is not None else None


def data_dir() -> Path:
    """The data directory: set_data_dir(...), else $MEMBENCH_DATA, else ./data."""
    return _data_dir_override or Path(os.environ.get("MEMBENCH_DATA") or "data").expanduser()  # empty: unset


@dataclass(frozen=True)
class ImageSplit:
    """Images of one split. pixels (M, C, H, W) uint8; value = pixels / scale in [0, 1]."""

    pixels: torch.Tensor
    labels: torch.Tensor       # (M,) int64: character index (Omniglot) or class (CIFAR)
    scale: float               # 1 for binary Omniglot, 255 for CIFAR

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """float32 images (*index.shape, C, H, W) in [0, 1]."""
        return self.pixels[index].float() / self.scale


@dataclass(frozen=True)
class ImageDataset:
    name: str                  # "omniglot" or "cifar10"
    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]   # label -> name ("Alphabet/characterNN" or CIFAR class index)
    source: str                # which files, machine-independent (no paths)

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "test"):
            raise MembenchError(f"unknown split '{name}'. Valid splits: train, test")
        return self.train if name == "train" else self.test

    def fingerprint(self) -> str:
        """Files and image counts, e.g. 'cifar-10-batches-py (train 4660, test 846)'."""
        return f"{self.source} (train {len(self.train)}, test {len(self.test)})"


def _stamp(paths: list[Path]) -> tuple:
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


# --- Omniglot -------------------------------------------------------------------------

def _omniglot_files(root: Path) -> tuple[list[Path], Path | None]:
    for folder in (root / "omniglot", root):
        full = folder / "images_background.zip"
        background = [full] if full.exists() else sorted(folder.glob("images_background_small*.zip"))
        evaluation = folder / "images_evaluation.zip"
        if background or evaluation.exists():
            return background, evaluation if evaluation.exists() else None
    raise DatasetMissing(
        f"Omniglot not found in {root} (looked for {root}/omniglot/images_background.zip or "
        f"images_background_small*.zip, and images_evaluation.zip). Download "
        f"{OMNIGLOT_URL.format(name='images_background.zip')} and "
        f"{OMNIGLOT_URL.format(name='images_evaluation.zip')} into {root}/omniglot/ "
        f"(or run `membench download omniglot --data-dir {root}`), or point --data-dir / $MEMBENCH_DATA "
        "at the directory holding them.")


def _decode_omniglot(png: bytes, image_size: int) -> np.ndarray:
    from PIL import Image

    ink = 255 - np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint8)  # ink = 255
    if ink.shape != (image_size, image_size):
        ink = np.asarray(Image.fromarray(ink).resize((image_size, image_size), Image.BOX))
    return (ink >= 128).astype(np.uint8)


def _corrupt(path: Path, exc: BaseException, fix: str) -> DatasetMissing:
    return DatasetMissing(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); {fix}")


def _read_omniglot_zip(path: Path, image_size: int, seen: set, root: Path) -> dict[str, list[np.ndarray]]:
    """character name 'Alphabet/characterNN' -> images, skipping (character, file) pairs in `seen`; `root` is
    the data directory (for the fix of an error)."""
    from PIL.Image import DecompressionBombError
    from PIL import UnidentifiedImageError

    try:
        return _read_omniglot_members(path, image_size, seen, root)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnidentifiedImageError, SyntaxError, ValueError,
            NotImplementedError, RuntimeError, DecompressionBombError) as exc:
        # (PIL's PNG reader raises SyntaxError on a broken chunk, ValueError on a too large text chunk,
        # DecompressionBombError on an image claiming more pixels than its limit; zipfile NotImplementedError on an
        # unknown compression method, RuntimeError on an encrypted member)
        raise _corrupt(path, exc, _omniglot_fix(path, root)) from None


def _read_omniglot_members(path: Path, image_size: int, seen: set, root: Path) -> dict[str, list[np.ndarray]]:
    characters: dict[str, list[np.ndarray]] = {}
    images = 0  # (those another zip held too included)
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.namelist()):
            parts = member.split("/")
            if not member.endswith(".png") or len(parts) < 3 or "__MACOSX" in parts or parts[-1].startswith("._"):
                continue  # (not an image, or a resource fork a macOS archiver adds)
            images += 1
            character, key = f"{parts[-3]}/{parts[-2]}", f"{parts[-3]}/{parts[-2]}/{parts[-1]}"
            if key in seen:
                continue
            seen.add(key)
            characters.setdefault(character, []).append(_decode_omniglot(archive.read(member), image_size))
    if not images:
        raise DatasetMissing(f"{path} holds no Omniglot images (<alphabet>/<character>/<image>.png); "
                             + _omniglot_fix(path, root))
    return characters


def _omniglot_fix(path: Path, root: Path) -> str:
    """How to replace a broken Omniglot zip: `membench download` fetches the published two, not the small ones."""
    download = f"`membench download omniglot --data-dir {root}`"
    if path.name in OMNIGLOT_FILES:
        return f"delete it and download it again ({download})"
    return (f"restore it from where it came (the small zips are not downloaded), or delete it and fetch the published "
            f"zips ({download}), which changes the split to theirs")


def load_omniglot(root: Path | None = None, image_size: int = 32) -> ImageDataset:
    """Omniglot, binarised at `image_size`, split by character (see the module docstring)."""
    root = Path(root) if root is not None else data_dir()
    background, evaluation = _omniglot_files(root)
    key = ("omniglot", image_size, _stamp(background + ([evaluation] if evaluation else [])))
    if key in _cache:
        return _cache[key]
    seen: set = set()
    pools = [{}, {}]  # train, test: character -> images
    for path, pool in [(path, pools[0]) for path in background] + (
            [(evaluation, pools[1 if background else 0])] if evaluation is not None else []):
        for character, images in _read_omniglot_zip(path, image_size, seen, root).items():
            pool.setdefault(character, []).extend(images)  # a character in two zips: the images of both
    if not (background and evaluation):
        by_alphabet: dict[str, list[str]] = {}
        for character in sorted(pools[0]):
            by_alphabet.setdefault(character.split("/")[0], []).append(character)
        for characters in by_alphabet.values():
            for character in characters[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]:
                pools[1][character] = pools[0].pop(character)
    classes = tuple(sorted(pools[0])) + tuple(sorted(pools[1]))
    splits = []
    for offset, pool in ((0, pools[0]), (len(pools[0]), pools[1])):
        names = sorted(pool)
        if not names:
            raise DatasetMissing(f"Omniglot in {root} has no characters for one split; add more zips")
        pixels = np.stack([image for name in names for image in pool[name]])[:, None]
        labels = np.concatenate([np.full(len(pool[name]), offset + i) for i, name in enumerate(names)])
        splits.append(ImageSplit(torch.from_numpy(pixels), torch.from_numpy(labels).long(), scale=1.0))
    source = "+".join(p.name for p in background + ([evaluation] if evaluation else []))
    dataset = ImageDataset("omniglot", splits[0], splits[1], classes, source)
    _cache[key] = dataset
    return dataset


# --- CIFAR-10 -------------------------------------------------------------------------

def _cifar_folder(root: Path) -> Path:
    for folder in (root / CIFAR_DIR, root):
        if (folder / CIFAR_TEST).exists() or (folder / CIFAR_TRAIN[0]).exists():
            missing = [name for name in (*CIFAR_TRAIN, CIFAR_TEST) if not (folder / name).exists()]
            if missing:
                raise DatasetMissing(f"CIFAR-10 in {folder} lacks {', '.join(missing)}; extract it again "
                                     f"(`membench download cifar10 --data-dir {root}`, or {CIFAR_URL} by hand)")
            return folder
    raise DatasetMissing(
        f"CIFAR-10 not found in {root} (looked for {root}/{CIFAR_DIR}/data_batch_1..5 and test_batch). "
        f"Download {CIFAR_URL} (md5 {CIFAR_MD5}) and extract it into {root}/ "
        f"(or run `membench download cifar10 --data-dir {root}`), or point --data-dir / $MEMBENCH_DATA "
        "at the directory holding cifar-10-batches-py/.")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays only: a CIFAR batch file runs no other code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # the last: bytes pickled by Python 3

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (M, 3, 32, 32) uint8, labels (M,) int64 in 0..9) of one batch file; `root` is the data directory."""
    fix = f"delete {path.parent} and extract {CIFAR_URL} again (`membench download cifar10 --data-dir {root}`)"
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"])
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, LookupError, TypeError, ValueError,
            OverflowError, MemoryError, ImportError) as exc:  # (stray bytes: an unknown opcode, a bad length, a
        # huge one; ImportError: a numpy 2 pickle read under numpy 1)
        raise _corrupt(path, exc, fix) from None
    if data.dtype != np.uint8:  # CIFAR's pixels are bytes; another type would be cast (NaN, 300) silently
        raise DatasetMissing(f"{path} holds pixels of type {data.dtype}, expected uint8 (0..255); {fix}")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DatasetMissing(f"{path} holds data of shape {data.shape} and labels of shape {labels.shape}, expected "
                             f"(M, 3072) and (M,); {fix}")
    if len(labels) and not (np.issubdtype(labels.dtype, np.integer) and 0 <= labels.min() and labels.max() <= 9):
        raise DatasetMissing(f"{path} holds labels that are not classes 0..9 (of type {labels.dtype}, from "
                             f"{labels.min()} to {labels.max()}); {fix}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _resize_uint8(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    tensor = torch.from_numpy(pixels)
    if image_size == pixels.shape[-1]:
        return tensor
    resized = torch.nn.functional.interpolate(tensor.float(), size=(image_size, image_size), mode="area")
    return resized.round().clamp(0, 255).to(torch.uint8)


def load_cifar10(root: Path | None = None, image_size: int = 32) -> ImageDataset:
    """CIFAR-10: train = data_batch_1..5, test = test_batch; images (3, size, size) in [0, 1]."""
    root = Path(root) if root is not None else data_dir()
    folder = _cifar_folder(root)
    files = [folder / name for name in (*CIFAR_TRAIN, CIFAR_TEST)]
    key = ("cifar10", image_size, _stamp(files))
    if key in _cache:
        return _cache[key]
    batches = [_read_cifar_batch(path, root) for path in files]
    train_pixels = np.concatenate([b[0] for b in batches[:-1]])
    train_labels = np.concatenate([b[1] for b in batches[:-1]])
    splits = [ImageSplit(_resize_uint8(pixels, image_size), torch.from_numpy(labels), scale=255.0)
              for pixels, labels in ((train_pixels, train_labels), batches[-1])]
    dataset = ImageDataset("cifar10", splits[0], splits[1], tuple(str(i) for i in range(10)), CIFAR_DIR)
    _cache[key] = dataset
    return dataset


LOADERS = {"omniglot": load_omniglot, "cifar10": load_cifar10}


def load(name: str, image_size: int = 32, root: Path | None = None) -> ImageDataset:
    if name not in LOADERS:
        raise MembenchError(f"unknown data set '{name}'. Valid: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](root, image_size)
