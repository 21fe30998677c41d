"""Image episodes (Figure 3): write a batch of images, read each back corrupted.

One episode writes `num_patterns` distinct images (default 64, the paper's batch) drawn
uniformly without replacement from one split (train for meta-training, test for
evaluation). Query i is image i with one corruption (exactly one of them is on):
- block (the default, Figure 3): one `block` x `block` square (default 16 x 16, at a uniform
  position fully inside the image, the same square in every channel) set to `fill_value` 0.5,
  the midpoint also used by the binary task. Neither data set ever holds the value 0.5
  (Omniglot is {0, 1}, CIFAR values are k/255), so models can tell the block;
- mask (`mask` > 0, `block` = 0): round(mask * H * W) pixel positions, drawn without
  replacement per query, set to 0.5 in every channel; the rest of the query is the image's
  own. This is the random pixel masking of Universal Hopfield Networks (UHN, Millidge et al.
  2022), which masks each position with probability `mask` and sets it to 0 instead;
- noise (`noise` > 0, `block` = 0): Gaussian noise of standard deviation `noise` added to every
  value independently, then clipped to [0, 1] (UHN clips |value + noise|). Every value may be
  wrong, so `spec.clamp_known` is False: a model must be free to change every entry. A noisy
  value that lands exactly on 0.5 is moved to the adjacent float32 towards the image's value,
  since models read 0.5 as "not shown" whatever clamp_known says (raw slots and universal
  Hopfield leave such entries out of their distances); so no noisy query holds 0.5. Omniglot
  queries are then real-valued, its patterns still binary.
The task config (run ids, checkpoint keys) names `noise` or `mask` only when set, so block
tasks keep the config they always had.

Errors per image, over every pixel of the image (corrupted or not):
- Omniglot: Hamming distance, the number of pixels with |retrieval - pattern| >= 0.5
  (thresholding at 0.5; an undecided 0.5 counts as wrong, as in the binary task);
- CIFAR-10: sum of squared errors over all 3 x 32 x 32 values in [0, 1]. Returning a
  block query unchanged costs about 46 per image on the test split (the block's squared
  distance to 0.5), so the paper's 5-30 fits this per-image sum, not a per-pixel mean (a 50%
  mask or noise of sigma 0.2 cost about 100).

Invalid arguments raise MembenchError naming the argument and its valid values: `block` in
[0, image_size], `noise` a finite number >= 0, `mask` in [0, 1] masking at least one pixel,
and exactly one of the three corruptions on (with noise or mask, give block=0).

The data directory is not part of the config (run ids must not depend on the machine);
it comes from `membench.datasets.data_dir()`. The config instead names the data that
was found ("data": files and image counts), so runs on another subset get other run ids
and checkpoints, and a mismatch is refused.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from membench import datasets
from membench.errors import DataMismatch, MembenchError
from membench.interface import TaskSpec
from membench.options import is_finite
from membench.tasks import Episodes, Task, check_positive


def _number(name: str, value: Any, valid: Callable[[float], bool], what: str) -> float:
    """float(value); MembenchError unless `value` is a finite real number for which `valid` holds."""
    if not (is_finite(value) and valid(value)):
        raise MembenchError(f"{name}={value!r} must be {what}")
    return float(value)


class ImageTask(Task):
    """Image episodes of one data set, queries corrupted by a block, a pixel mask or noise (one of
    them); subclasses name the data set."""

    dataset_name: ClassVar[str]
    channels: ClassVar[int]
    binary: ClassVar[bool]

    def __init__(self, num_patterns: int = 64, image_size: int = 32, block: int = 16, noise: float = 0.0,
                 mask: float = 0.0, data: str | None = None):
        check_positive("num_patterns", num_patterns)
        check_positive("image_size", image_size)
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= image_size:
            raise MembenchError(f"block={block!r} must lie in [0, image_size={image_size}] (0: no block)")
        pixels = image_size * image_size
        self.noise = _number("noise", noise, lambda v: v >= 0,
                             "a standard deviation, a finite number > 0 (0: no noise)")
        self.mask = _number("mask", mask, lambda v: 0 <= v <= 1 and (v == 0 or round(v * pixels) > 0),
                            f"a fraction in (0, 1] of the {pixels} pixel positions that masks at least one "
                            "(0: no mask)")
        corruptions = [name for name, level in (("block", block), ("noise", self.noise), ("mask", self.mask)) if level]
        if len(corruptions) != 1:
            raise MembenchError(f"give exactly one corruption: block >= 1, noise > 0 or mask > 0, the others 0 "
                                f"(got block={block}, noise={noise}, mask={mask}; with noise or mask, give block=0)")
        self.corruption = corruptions[0]
        self.image_size, self.block = image_size, block
        self.masked = round(self.mask * pixels)  # pixel positions masked per query
        self.dataset = datasets.load(self.dataset_name, image_size)
        if data is not None and data != self.dataset.fingerprint():
            raise DataMismatch(f"this run was defined on {self.dataset_name} data '{data}', but "
                               f"{datasets.data_dir()} holds '{self.dataset.fingerprint()}'",
                               "point --data-dir at the original data or use a new output directory")
        sizes = {"train": len(self.dataset.train), "test": len(self.dataset.test)}
        split = min(sizes, key=sizes.get)
        if num_patterns > sizes[split]:
            raise MembenchError(f"num_patterns={num_patterns} exceeds the {sizes[split]} images of the {split} split "
                                f"of {self.dataset_name} in {datasets.data_dir()}; give a smaller --num-patterns, or "
                                "point --data-dir at data with more")
        self.spec = TaskSpec(pattern_shape=(self.channels, image_size, image_size), num_patterns=num_patterns,
                             binary=self.binary, fill_value=0.5, clamp_known=self.corruption != "noise")

    def sample_indices(self, batch_size: int, generator: torch.Generator, split: str) -> torch.Tensor:
        """(B, N) distinct image indices per episode into `split`."""
        size = len(self.dataset.split(split))
        return torch.rand(batch_size, size, generator=generator).topk(self.spec.num_patterns, dim=1).indices

    def block_mask(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, N, 1, H, W) bool: True inside each query's block (uniform position, fully inside)."""
        size, block, n = self.image_size, self.block, self.spec.num_patterns
        top = torch.randint(0, size - block + 1, (batch_size, n, 1), generator=generator)
        left = torch.randint(0, size - block + 1, (batch_size, n, 1), generator=generator)
        coords = torch.arange(size)
        rows = (coords >= top) & (coords < top + block)      # (B, N, H)
        cols = (coords >= left) & (coords < left + block)    # (B, N, W)
        return (rows[..., :, None] & cols[..., None, :])[:, :, None]

    def pixel_mask(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, N, 1, H, W) bool: True at `masked` pixel positions per query, drawn without replacement."""
        shape = (batch_size, self.spec.num_patterns, self.image_size * self.image_size)
        chosen = torch.rand(shape, generator=generator).topk(self.masked, dim=-1).indices
        mask = torch.zeros(shape, dtype=torch.bool).scatter_(-1, chosen, True)
        return mask.view(batch_size, self.spec.num_patterns, 1, self.image_size, self.image_size)

    def add_noise(self, patterns: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """patterns + N(0, noise²) per value, clipped to [0, 1]; a value on 0.5 moves one float32 step
        towards its pattern's value (patterns never hold 0.5), so no query entry reads as "not shown"."""
        noisy = (patterns + self.noise * torch.randn(patterns.shape, generator=generator)).clamp(0.0, 1.0)
        fill = self.spec.fill_value
        return torch.where(noisy == fill, torch.nextafter(noisy, patterns), noisy)

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "test") -> Episodes:
        patterns = self.dataset.split(split).images(self.sample_indices(batch_size, generator, split))
        if self.corruption == "noise":
            return Episodes(patterns, self.add_noise(patterns, generator))
        mask = self.block_mask if self.corruption == "block" else self.pixel_mask
        return Episodes(patterns, patterns.masked_fill(mask(batch_size, generator), self.spec.fill_value))

    def config(self) -> dict[str, Any]:
        config = {"kind": self.dataset_name, "num_patterns": self.spec.num_patterns, "image_size": self.image_size,
                  "block": self.block}
        if self.noise:  # only when set, so configs (run ids, checkpoint keys) of block tasks stay as they were
            config["noise"] = self.noise
        if self.mask:
            config["mask"] = self.mask
        return {**config, "data": self.dataset.fingerprint()}


class OmniglotTask(ImageTask):
    """Binarised Omniglot characters (1, 32, 32); error = wrong pixels (Hamming distance)."""

    dataset_name, channels, binary = "omniglot", 1, True
    error_unit = "pixels"

    def errors(self, retrievals: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        assert retrievals.shape == patterns.shape, f"retrievals {tuple(retrievals.shape)} != patterns {tuple(patterns.shape)}"
        return ((retrievals - patterns).abs() >= 0.5).flatten(2).sum(dim=-1).float()


class Cifar10Task(ImageTask):
    """CIFAR-10 colour images (3, 32, 32); error = sum of squared errors per image."""

    dataset_name, channels, binary = "cifar10", 3, False
    error_unit = "squared error"

    def errors(self, retrievals: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        assert retrievals.shape == patterns.shape, f"retrievals {tuple(retrievals.shape)} != patterns {tuple(patterns.shape)}"
        return (retrievals - patterns).pow(2).flatten(2).sum(dim=-1)

