"""The image encoder and decoder shared by EBMM-FC and every image baseline (App. B.2).

Encoder: 3 residual blocks (32, 64, 96 channels, 3x3 convolutions, stride 2) -> flatten
-> Linear(256) -> LayerNorm. Decoder, its transpose: Linear(256 -> 96 x 4 x 4) -> reshape
-> 3 transposed residual blocks (96 -> 64 -> 32 -> image channels, each doubling the
resolution) -> sigmoid, so reconstructions lie in [0, 1]. Channel counts and the embedding
width are configurable (`CodecConfig`) so a quick preset can shrink them; the image size
must be divisible by 2 ** len(channels).

Residual block (no normalisation inside: episodes must not share batch statistics):
    y = conv3x3(relu(conv3x3_stride2(x))) + conv1x1_stride2(x),  then ReLU
Transposed block:
    y = conv3x3(relu(convT4x4_stride2(x))) + convT2x2_stride2(x),  then ReLU (not after the last)
Weights use He (Kaiming) initialisation, as in the paper (App. D).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from membench.errors import MembenchError


@dataclass(frozen=True)
class CodecConfig:
    image_channels: int = 1                  # 1 for Omniglot, 3 for CIFAR-10
    image_size: int = 32                     # height = width of the images
    channels: tuple[int, ...] = (32, 64, 96)  # residual block widths (paper: 32, 64, 96)
    embedding: int = 256                     # code width after Linear + LayerNorm (paper: 256)

    @property
    def grid(self) -> int:
        """Spatial size after the encoder's strided blocks."""
        return self.image_size // 2 ** len(self.channels)

    @classmethod
    def for_images(cls, pattern_shape: tuple[int, ...], channels: tuple[int, ...], embedding: int = 256) -> "CodecConfig":
        """The codec for image patterns (C, H, W) with square H = W."""
        assert len(pattern_shape) == 3 and pattern_shape[1] == pattern_shape[2], (
            f"the image codec takes square images (C, H, H), got {pattern_shape}")
        size = pattern_shape[1]
        halvings = (size & -size).bit_length() - 1  # how often `size` halves evenly
        if len(channels) > halvings:
            raise MembenchError(f"{len(channels)} residual blocks (channels={list(channels)}) halve {size}x{size} "
                                f"images {len(channels)} times, which {size} allows only {halvings} times; give at "
                                f"most {halvings} channel widths")
        return cls(image_channels=pattern_shape[0], image_size=size, channels=tuple(channels), embedding=embedding)


def image_codec(pattern_shape: tuple[int, ...], channels: tuple[int, ...],
                embedding: int = 256) -> tuple["Encoder", "Decoder", int]:
    """Encoder, logit-producing decoder and code width for a baseline on images (C, H, W)."""
    config = CodecConfig.for_images(pattern_shape, channels, embedding)
    return Encoder(config), Decoder(config, logits=True), config.embedding


def he_init(module: nn.Module, nonlinearity: str = "relu") -> None:
    """He-normal weights for the gain of `nonlinearity` and zero biases, in every (transposed) convolution and
    linear layer of `module` (App. D)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
            nn.init.zeros_(layer.bias)


class ResBlock(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.skip(x))


class TransposedResBlock(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, 2H, 2W); `last` leaves the output linear (for the sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int, last: bool = False):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x))) + self.skip(x)
        return y if self.last else torch.relu(y)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm written with mean and variance ops, so that autograd gets its derivatives of every order
    right: torch's fused layer_norm gets the third wrong (its saved statistics carry no history; 2.13 fails
    gradcheck of a gradient of a squared input-gradient), and EBMM's meta-gradient through a write with the
    ||grad_x E||^2 term needs it. The same parameters and state_dict; values equal to rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        centred = x - x.mean(dims, keepdim=True)
        out = centred * torch.rsqrt(centred.pow(2).mean(dims, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight
        return out if self.bias is None else out + self.bias


class Encoder(nn.Module):
    """Images (..., C, H, W) in [0, 1] -> codes (..., embedding); any leading batch dims. `norm`: the closing
    LayerNorm's class (EBMM's energy, differentiated three times in meta-training, takes `LayerNorm`)."""

    def __init__(self, config: CodecConfig, norm: type[nn.LayerNorm] = nn.LayerNorm):
        super().__init__()
        assert config.grid >= 1 and config.grid * 2 ** len(config.channels) == config.image_size, (
            f"image_size={config.image_size} must be divisible by 2**{len(config.channels)}")
        self.config = config
        widths = (config.image_channels, *config.channels)
        self.blocks = nn.Sequential(*(ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.linear = nn.Linear(config.channels[-1] * config.grid**2, config.embedding)
        self.norm = norm(config.embedding)
        he_init(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        shape = (c.image_channels, c.image_size, c.image_size)
        assert tuple(images.shape[-3:]) == shape, f"encoder expects (..., {shape}), got {tuple(images.shape)}"
        lead = images.shape[:-3]
        features = self.blocks(images.reshape(-1, *shape)).flatten(1)
        return self.norm(self.linear(features)).reshape(*lead, c.embedding)


class Decoder(nn.Module):
    """Codes (..., embedding) -> images (..., C, H, W) in [0, 1]; the encoder's transpose.

    With `logits=True` it returns the pre-sigmoid values instead (for models that apply the
    sigmoid themselves, e.g. inside a cross-entropy loss).
    """

    def __init__(self, config: CodecConfig, logits: bool = False):
        super().__init__()
        self.config, self.logits = config, logits
        widths = (*reversed(config.channels), config.image_channels)
        self.linear = nn.Linear(config.embedding, config.channels[-1] * config.grid**2)
        self.blocks = nn.Sequential(*(TransposedResBlock(a, b, last=i == len(widths) - 2)
                                      for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))))
        he_init(self)
        for layer in self.blocks[-1].modules():  # the output feeds a sigmoid, not a ReLU: unit gain
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        c = self.config
        assert codes.shape[-1] == c.embedding, f"decoder expects (..., {c.embedding}), got {tuple(codes.shape)}"
        lead = codes.shape[:-1]
        grid = torch.relu(self.linear(codes.reshape(-1, c.embedding))).reshape(-1, c.channels[-1], c.grid, c.grid)
        images = self.blocks(grid) if self.logits else torch.sigmoid(self.blocks(grid))
        return images.reshape(*lead, c.image_channels, c.image_size, c.image_size)
