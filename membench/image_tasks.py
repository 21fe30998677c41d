"""Image episodes (Figure 3): write a batch of images, read each back with a block corrupted.

One episode writes `num_patterns` distinct images (default 64, the paper's batch) drawn
uniformly without replacement from one split (train for meta-training, test for
evaluation). Query i is image i with one `block` x `block` square (default 16 x 16, at a
uniform position fully inside the image, the same square in every channel) set to
`fill_value` 0.5, the midpoint also used by the binary task. Neither data set ever holds
the value 0.5 (Omniglot is {0, 1}, CIFAR values are k/255), so models can tell the block.

Errors per image, over every pixel of the image (the block and the rest):
- Omniglot: Hamming distance, the number of pixels with |retrieval - pattern| >= 0.5
  (thresholding at 0.5; an undecided 0.5 counts as wrong, as in the binary task);
- CIFAR-10: sum of squared errors over all 3 x 32 x 32 values in [0, 1]. Returning the
  query unchanged costs about 46 per image on the test split (the block's squared distance
  to 0.5), so the paper's 5-30 fits this per-image sum, not a per-pixel mean.

The data directory is not part of the config (run ids must not depend on the machine);
it comes from `membench.datasets.data_dir()`. The config instead names the data that
was found ("data": files and image counts), so runs on another subset get other run ids
and checkpoints, and a mismatch is refused.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from membench import datasets
from membench.errors import MembenchError
from membench.interface import TaskSpec
from membench.tasks import Episodes, Task, check_positive


class ImageTask(Task):
    """Block-corrupted image episodes of one data set; subclasses name the data set."""

    dataset_name: ClassVar[str]
    channels: ClassVar[int]
    binary: ClassVar[bool]

    def __init__(self, num_patterns: int = 64, image_size: int = 32, block: int = 16, data: str | None = None):
        check_positive("num_patterns", num_patterns)
        check_positive("image_size", image_size)
        if not 1 <= block <= image_size:
            raise MembenchError(f"block={block} must lie in [1, image_size={image_size}]")
        self.image_size, self.block = image_size, block
        self.dataset = datasets.load(self.dataset_name, image_size)
        if data is not None and data != self.dataset.fingerprint():
            raise MembenchError(
                f"this run was defined on {self.dataset_name} data '{data}', but {datasets.data_dir()} holds "
                f"'{self.dataset.fingerprint()}'; point --data-dir at the original data or use a new output directory")
        smallest = min(len(self.dataset.train), len(self.dataset.test))
        if num_patterns > smallest:
            raise MembenchError(f"num_patterns={num_patterns} exceeds the {smallest} images of the smaller split")
        self.spec = TaskSpec(pattern_shape=(self.channels, image_size, image_size), num_patterns=num_patterns,
                             binary=self.binary, fill_value=0.5)

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

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "test") -> Episodes:
        patterns = self.dataset.split(split).images(self.sample_indices(batch_size, generator, split))
        queries = patterns.masked_fill(self.block_mask(batch_size, generator), self.spec.fill_value)
        return Episodes(patterns, queries)

    def config(self) -> dict[str, Any]:
        return {"kind": self.dataset_name, "num_patterns": self.spec.num_patterns, "image_size": self.image_size,
                "block": self.block, "data": self.dataset.fingerprint()}


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

