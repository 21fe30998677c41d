"""ResNet energy networks for images (EBMM paper, App. B.2 and B.3).

Both map images (M, C, H, W) in [0, 1] to energies (M,) and name their writable tensors in
`writable_names`; everything else is static (meta-learned, shared by all episodes).

Fully connected memory (`ResNetFCEnergy`, App. B.2), on the shared image encoder:

    e = LayerNorm(Linear(ResBlocks(x)))          # membench.encoders.Encoder, width `embedding`
    s_0 = 0; for each of `hops` hops:
        z = [e, s]
        c = tanh([memory(e), static(z)])         # memory: Linear(embedding -> d), writable
        u = sigmoid(gate(z))
        s = LayerNorm(u * c + (1 - u) * s)
    E(x) = Linear(1)(tanh(Linear(readout)(s)))

  Memory = (embedding + 1) * d floats: 257 * d at the paper's embedding of 256.

  Linear memory units (`linear_memory=True`, ours, not the paper's): c = [memory(e), tanh(static(z))],
  the memory units without the tanh, so that meta-training cannot switch the memory off by saturating
  them (it did, from two stored images on: results/diagnostics/ebmm-images).

Convolutional memory (`ResNetConvEnergy`, App. B.3):

    f = ResBlocks(x)                             # 2 blocks, stride 2 each (paper: 32, 64 channels)
    f = Bottleneck(f, stride 2); f = Bottleneck(f)  # width 128, bottleneck 64 in the paper
    s_0 = 0; for each of `hops` hops (a convolutional GRU-like cell on the small grid):
        z = [f, s]
        s = sigmoid(conv_u(z)) * tanh(conv_c(z)) + (1 - sigmoid(conv_u(z))) * s
    E(x) = Linear(1)(tanh(Linear(readout)(flatten(s))))

  Each bottleneck block's 3x3 convolution has `d` writable output channels (weight
  d x bottleneck x 3 x 3 and bias d) beside `width - d` static ones, so memory =
  2 * (9 * bottleneck * d + d): 1154 * d at the paper's bottleneck of 64.

  Linear memory channels (`linear_memory=True`, ours, not the paper's): the d writable channels skip
  the ReLU after the 3x3 convolution (the block's output ReLU stays), the conv counterpart of the FC
  energy's option (a ReLU unit a write pushes below 0 passes the read nothing, as a saturated tanh
  unit does).

The quick preset shrinks channel counts and hidden sizes (ebmm.config.IMAGE_PRESETS);
memory counts always come from the writable tensors themselves.

Centred memory (`centre=True`, ours, not the paper's): each writable layer reads its input minus a
static, meta-learned centre c, memory(e - c) (conv: each bottleneck's writable 3x3 convolution reads
its ReLU features minus a per-channel c), started by `initialise` at the mean input over training
images. EBMM-FC expresses the same energies (memory(e - c) = memory(e) - W c; the conv energy too, up
to its zero padding at the borders), but the write's step on W, g (e - c)^T, then moves a query's
memory units by how far its centred input agrees with the stored images', not by the embedding part
every image shares (the bias's step stays common to all). Without it, the part of one write's change
that all queries share is ~24 times the part that differs between them (untrained quick EBMM-FC), and
the write saturates the tanh units or, at small rates, stores nothing (results/diagnostics/ebmm-images).

Both recurrences are computed with two exact shortcuts, as the gated-RNN energy's are: the
e- (f-) halves of the hop's layers are applied once, not every hop (e and f do not change between
hops), and hop 1 skips the s-halves (s_0 = 0); the two layers of a hop run as one (their weights
stacked). For the conv energy the hop's two 3x3 convolutions are most of its arithmetic, so this
halves them (results/bench/meta_update_flops.txt).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from membench.encoders import CodecConfig, Encoder, LayerNorm, ResBlock, he_init
from membench.errors import MembenchError


class ResNetFCEnergy(nn.Module):
    """E(x): images (M, C, H, W) -> (M,). Writable: `memory.weight` (d, embedding), `memory.bias` (d,)."""

    writable_names: tuple[str, ...] = ("memory.weight", "memory.bias")

    def __init__(self, codec: CodecConfig, memory_size: int = 32, hidden: int = 512, hops: int = 3,
                 readout: int = 1024, centre: bool = False, linear_memory: bool = False):
        super().__init__()
        if not 0 < memory_size < hidden:
            raise MembenchError(f"ebmm: memory_size={memory_size} must lie in (0, hidden={hidden}), the memory's units "
                                f"being part of the hidden layer: give --option hidden above {memory_size}")
        if hops < 1:
            raise MembenchError(f"hops={hops} must be positive")
        self.hidden, self.hops = hidden, hops
        width = codec.embedding
        self.memory = nn.Linear(width, memory_size)                      # writable
        self.static = nn.Linear(width + hidden, hidden - memory_size)    # static from here on
        self.gate = nn.Linear(width + hidden, hidden)
        self.norm = LayerNorm(hidden)  # membench.encoders': right to the third derivative
        self.readout = nn.Sequential(nn.Linear(hidden, readout), nn.Tanh(), nn.Linear(readout, 1))
        he_init(self, "linear")
        self.encoder = Encoder(codec, norm=LayerNorm)  # He-initialised by its own module
        self.centre = nn.Parameter(torch.zeros(width)) if centre else None  # static: what the memory reads around
        self.linear_memory = linear_memory  # the d memory units enter the candidate without the tanh

    @torch.no_grad()
    def initialise(self, images: torch.Tensor) -> None:
        """Centre the memory's input on images (M, C, H, W) of the train split (no-op without `centre`)."""
        if self.centre is not None:
            self.centre.copy_(self.encoder(images).mean(0))

    @torch.no_grad()
    def track_centre(self, images: torch.Tensor, share: float) -> None:
        """Move the centre `share` of the way to the mean embedding of images (M, C, H, W), and the memory
        bias by W times that move, so that W (e - c) + b, and with it every energy of theta_bar, is unchanged;
        a write's steps, which follow e - c, are not (`centre` must be on)."""
        target = self.encoder(images).mean(0)
        move = share * (target - self.centre)
        self.memory.bias.add_(self.memory.weight @ move)
        self.centre.add_(move)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, C, H, W) -> energies (M,)."""
        code = self.encoder(x)                                    # (M, embedding)
        written = self.memory(code if self.centre is None else code - self.centre)  # (M, d): the same every hop
        weight = torch.cat([self.static.weight, self.gate.weight])  # (2 hidden - d, embedding + hidden)
        split, width = self.hidden - written.shape[-1], code.shape[-1]
        units = written if self.linear_memory else torch.tanh(written)  # the memory units: the same every hop
        projected = F.linear(code, weight[:, :width], torch.cat([self.static.bias, self.gate.bias]))
        state = None                                              # s_0 = 0
        for _ in range(self.hops):
            mixed = projected if state is None else projected + F.linear(state, weight[:, width:])
            candidate = torch.cat([units, torch.tanh(mixed[..., :split])], dim=-1)
            update = torch.sigmoid(mixed[..., split:])
            state = self.norm(update * candidate if state is None else update * candidate + (1 - update) * state)
        return self.readout(state).squeeze(-1)


class WritableBottleneck(nn.Module):
    """(M, C_in, H, W) -> (M, width, H / stride, W / stride); the 3x3 conv's first d outputs are writable."""

    def __init__(self, in_channels: int, width: int, bottleneck: int, memory_size: int, stride: int = 1,
                 centre: bool = False, linear_memory: bool = False):
        super().__init__()
        if not 0 < memory_size < width:
            raise MembenchError(f"memory_size={memory_size} must lie in (0, width={width})")
        self.reduce = nn.Conv2d(in_channels, bottleneck, 1)
        self.memory = nn.Conv2d(bottleneck, memory_size, 3, stride=stride, padding=1)        # writable
        self.static = nn.Conv2d(bottleneck, width - memory_size, 3, stride=stride, padding=1)
        self.expand = nn.Conv2d(width, width, 1)
        self.skip = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.centre = nn.Parameter(torch.zeros(bottleneck)) if centre else None  # static, per channel
        self.linear_memory = linear_memory  # the writable channels skip the ReLU

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """Centre the writable convolution's input on the block's inputs x (M, C_in, H, W) (no-op without `centre`)."""
        if self.centre is not None:
            self.centre.copy_(torch.relu(self.reduce(x)).mean((0, 2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.reduce(x))
        read = h if self.centre is None else h - self.centre[:, None, None]
        if self.linear_memory:
            h = torch.cat([self.memory(read), torch.relu(self.static(h))], dim=1)
        else:
            h = torch.relu(torch.cat([self.memory(read), self.static(h)], dim=1))
        return torch.relu(self.expand(h) + self.skip(x))


class ResNetConvEnergy(nn.Module):
    """E(x): images (M, C, H, W) -> (M,). Writable: each bottleneck's `memory` convolution."""

    writable_names: tuple[str, ...] = ("block1.memory.weight", "block1.memory.bias",
                                       "block2.memory.weight", "block2.memory.bias")

    def __init__(self, image_channels: int = 1, image_size: int = 32, channels: tuple[int, int] = (32, 64),
                 width: int = 128, bottleneck: int = 64, memory_size: int = 4, hidden: int = 128, hops: int = 3,
                 readout: int = 1024, centre: bool = False, linear_memory: bool = False):
        super().__init__()
        if len(channels) != 2:
            raise MembenchError(f"the conv energy has 2 residual blocks, got channels={channels}")
        if image_size % 8:
            raise MembenchError(f"image_size={image_size} must be divisible by 8 (three stride-2 stages)")
        if hops < 1:
            raise MembenchError(f"hops={hops} must be positive")
        self.hidden, self.hops, self.grid = hidden, hops, image_size // 8
        self.stem = nn.Sequential(ResBlock(image_channels, channels[0]), ResBlock(channels[0], channels[1]))
        self.block1 = WritableBottleneck(channels[1], width, bottleneck, memory_size, stride=2, centre=centre,
                                         linear_memory=linear_memory)
        self.block2 = WritableBottleneck(width, width, bottleneck, memory_size, centre=centre,
                                         linear_memory=linear_memory)
        self.candidate = nn.Conv2d(width + hidden, hidden, 3, padding=1)
        self.gate = nn.Conv2d(width + hidden, hidden, 3, padding=1)
        self.readout = nn.Sequential(nn.Linear(hidden * self.grid**2, readout), nn.Tanh(), nn.Linear(readout, 1))
        # Every layer at gain 1, its ReLU stem and bottlenecks too (App. D says He init; the FC energy's shared encoder
        # has He's ReLU gain, then a LayerNorm): with He's gain on them the CPU smoke point learned less in both seeds
        # tried (results/diagnostics/ebmm-conv-init)
        he_init(self, "linear")

    @torch.no_grad()
    def initialise(self, images: torch.Tensor) -> None:
        """Centre each bottleneck's writable input on images (M, C, H, W) of the train split, in order
        (no-op without `centre`)."""
        if self.block1.centre is None:
            return
        features = self.stem(images)
        for block in (self.block1, self.block2):
            block.initialise(features)
            features = block(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, C, H, W) -> energies (M,)."""
        features = self.block2(self.block1(self.stem(x)))          # (M, width, H/8, W/8)
        weight = torch.cat([self.candidate.weight, self.gate.weight])  # (2 hidden, width + hidden, 3, 3)
        width = features.shape[1]
        projected = F.conv2d(features, weight[:, :width], torch.cat([self.candidate.bias, self.gate.bias]), padding=1)
        state = None                                               # s_0 = 0
        for _ in range(self.hops):
            mixed = projected if state is None else projected + F.conv2d(state, weight[:, width:], padding=1)
            candidate, update = torch.tanh(mixed[:, :self.hidden]), torch.sigmoid(mixed[:, self.hidden:])
            state = update * candidate if state is None else update * candidate + (1 - update) * state
        return self.readout(state.flatten(1)).squeeze(-1)
