"""Memory Networks (Weston et al.; end-to-end form of Sukhbaatar et al.) as an associative memory.

Write: every pattern gets one slot, `slot_i = embed(encoder(x_i))[:width]` truncated to
the slot width `width = min(embedding_width, budget // N)`. Two variants:
- `memory_networks` (the paper's accounting): `embed` is the identity, so a slot holds the
  first `width` values of the (encoded) pattern itself. At N = 96 a slot keeps 86 of 128
  bits, which predicts the paper's 10.5 error bits.
- `memory_networks_learned`: `embed` is a learned linear map. With real-valued slots it
  learns to spread all 128 bits over the 86 values, which beats the paper's number (an
  extension of ours, reported as its own row).
Read: the query is embedded the same way (its own learned embedding, same truncation),
attends over the slots with a softmax, and the attended slot `o` (zero-padded back to
the embedding width) is decoded together with the query features `u`, as in MemN2N's
`W(o + u)`: `logits = decoder(out(o) + skip(u))`, retrieval = sigmoid(logits) in [0, 1].

Memory = slots x slot width = N * min(embedding_width, budget // N) float32 values. At
the Table 1 budget (8256) and 128-bit patterns, N <= 64 keeps whole 128-wide slots and
N = 96 keeps 86 values per slot (96 * 86 = 8256). The slot width depends only on N and
the budget, so one set of weights serves every N (one checkpoint on mixed N).

Reading is a softmax-weighted sum over slots, so retrievals do not depend on the order
in which the patterns were written (the memory is a set).

The encoder/decoder pair is pluggable: `encoder` maps patterns (M, *S) to features
(M, feature_width), `decoder` maps features (M, feature_width) to logits (M, *S).
The default is the identity on flat patterns (feature_width = pattern size); image
patterns (C, H, W) get the shared ResNet encoder and transposed decoder of App. B.2
(membench.encoders; `channels` and `embedding_width` from the preset), so a slot holds the
first `width` values of an image's code (Figure 3: 64 slots x width).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.readout import LogitReadout
from membench.budget import TABLE1_NUM_PATTERNS
from membench.encoders import image_codec
from membench.errors import OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.options import check_fields


@dataclass(frozen=True)
class MemNetConfig:
    embedding_width: int = 128   # E: full slot width; slots are truncated to min(E, budget // N)
    learned_embedding: bool = False  # False: slot = the features themselves (needs E == feature width)
    init_scale: float = 1.0      # initial attention inverse temperature (learned, log-parameterised)
    identity_query: bool = False  # query embedding started at the identity (keys = the query's code, as are the
                                  # slots unless learned_embedding)
    channels: tuple[int, ...] = (32, 64, 96)  # images only: encoder / decoder residual block widths

    def __post_init__(self) -> None:
        check_fields("memory_networks", self, positive=("embedding_width", "init_scale"))


IMAGE_QUICK_TRAIN = dict(log_every=20, checkpoint_every=100, clip_norm=1.0)


PRESETS: dict[str, Preset] = {
    # CPU: at least EBMM quick's training compute (9000 updates of 16 episodes; EBMM's: 7800)
    "quick": Preset(MemNetConfig(), TrainConfig(steps=9000, batch_size=16, lr=1e-3, clip_norm=1.0,
                                                log_every=50, checkpoint_every=500, num_patterns=TABLE1_NUM_PATTERNS)),
    # one GPU, EBMM gpu's training compute (30,000 updates of 128 episodes)
    "gpu": Preset(MemNetConfig(), TrainConfig(steps=30_000, batch_size=128, lr=1e-3, clip_norm=1.0, cosine_decay=True,
                                              log_every=50, checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS,
                                              cuda_graph=True)),
    # GPU scale: the paper presets' 200,000 updates (a tenth of App. D's 2e6; baselines made at least EBMM's
    # updates), bigger batches, a lower learning rate
    "paper": Preset(MemNetConfig(), TrainConfig(steps=200_000, batch_size=64, lr=2e-4, clip_norm=1.0,
                                                log_every=100, checkpoint_every=2000, num_patterns=TABLE1_NUM_PATTERNS)),
}

# Images (Figure 3): 256-wide codes of the shared encoder; quick narrows the encoder / decoder and
# trains for about the CPU time of an EBMM point (1600 steps of 2 episodes). The attention starts at
# the query's own code (query embedding = identity) and sharp (inverse temperature 8); ours, the paper
# gives no initialisation. From a random query embedding at 1.0, as on binary patterns, the quick image
# preset never learned to address its slots on CIFAR (2 seeds; 12,000 updates for one) nor on Omniglot
# for seed 0 (weights spread evenly over 64 images, the read the decoder's inpainting of the query alone);
# at 8 it did after about 5,000 updates (seed 0) or 9,000 (seed 1); at 8 from the identity, both seeds'
# training error was below 40 over updates 1,201-1,600 (the runs without the identity: 58-64), and both
# address their slots after 6,000 (results/diagnostics/ebmm-images, "Memory Networks and MANN").
IMAGE_START = {"init_scale": 8.0, "identity_query": True}
IMAGE_PRESETS: dict[str, Preset] = {
    "quick": Preset(MemNetConfig(embedding_width=256, channels=(16, 32, 32), **IMAGE_START),
                    TrainConfig(steps=1600, batch_size=2, lr=1e-3, **IMAGE_QUICK_TRAIN)),
    # the paper's codec; EBMM gpu's image training compute
    "gpu": Preset(MemNetConfig(embedding_width=256, **IMAGE_START),
                  TrainConfig(steps=6000, batch_size=16, lr=3e-4, clip_norm=1.0, cosine_decay=True, log_every=50,
                              checkpoint_every=250, cuda_graph=True)),
    # EBMM paper's updates and App. D optimiser (clipping at 0.05), logged and checkpointed as EBMM's
    "paper": Preset(MemNetConfig(embedding_width=256, **IMAGE_START),
                    TrainConfig(steps=200_000, batch_size=16, lr=5e-5, weight_decay=1e-6, clip_norm=0.05,
                                log_every=100, checkpoint_every=1000)),
}


class MemoryNetwork(LogitReadout, AssociativeMemory):
    name = "memory_networks"
    trainable = True

    def __init__(self, spec: TaskSpec, budget: int, config: MemNetConfig = MemNetConfig(),
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 feature_width: int | None = None):
        super().__init__()
        assert (encoder is None) == (decoder is None), "give both encoder and decoder, or neither"
        assert encoder is None or feature_width is not None, "a custom encoder needs its feature_width"
        self.spec, self.budget, self.settings = spec, budget, config
        self.feature_width = feature_width or spec.pattern_size
        self.encoder = encoder or nn.Flatten()   # default: identity on flat patterns
        self.decoder = decoder or nn.Identity()
        width = config.embedding_width
        if config.learned_embedding:
            self.embed_write: nn.Module = nn.Linear(self.feature_width, width)  # slot embedding (MemN2N's A)
        else:
            assert width == self.feature_width, f"identity slots need embedding_width == feature width ({self.feature_width})"
            self.embed_write = nn.Identity()
        self.embed_query = nn.Linear(self.feature_width, width)   # query embedding (MemN2N's B)
        if config.identity_query:  # drawn first, then replaced: the other weights are those of the random start
            with torch.no_grad():
                self.embed_query.weight.copy_(torch.eye(width, self.feature_width))
                self.embed_query.bias.zero_()
        self.out = nn.Linear(width, self.feature_width)            # attended slot -> features
        self.skip = nn.Linear(self.feature_width, self.feature_width)  # query features -> features
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))

    @classmethod
    def presets(cls, spec: TaskSpec, options: Any = None) -> dict[str, Preset]:
        return IMAGE_PRESETS if len(spec.pattern_shape) == 3 else PRESETS

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "MemoryNetwork":
        """Images get the shared ResNet codec at the preset's channels and embedding width."""
        config = preset.model
        if len(spec.pattern_shape) == 3:
            encoder, decoder, width = image_codec(spec.pattern_shape, config.channels, config.embedding_width)
            return cls(spec, budget, config, encoder=encoder, decoder=decoder, feature_width=width)
        return cls(spec, budget, config)

    def config(self) -> dict[str, Any]:
        return {**asdict(self.settings), "budget": self.budget, "feature_width": self.feature_width}

    def slot_width(self, num_patterns: int) -> int:
        """Values per slot for N written patterns: min(embedding width, budget // N)."""
        width = min(self.settings.embedding_width, self.budget // num_patterns)
        if width < 1:
            raise OverBudgetError(f"{self.name}: the budget of {self.budget} floats leaves no value per slot for "
                                  f"N={num_patterns} patterns; use N <= {self.budget} or a larger --budget")
        return width

    def memory_floats(self, spec: TaskSpec) -> int:
        return spec.num_patterns * self.slot_width(spec.num_patterns)

    def _features(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, M, *S) -> encoder features (B, M, feature_width)."""
        batch, count = patterns.shape[:2]
        features = self.encoder(patterns.reshape(batch * count, *patterns.shape[2:]))
        assert features.shape == (batch * count, self.feature_width), (
            f"encoder gave {tuple(features.shape)}, expected ({batch * count}, {self.feature_width})")
        return features.view(batch, count, self.feature_width)

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, N, *S) -> slots (B, N, width), width = slot_width(N)."""
        assert patterns.shape[2:] == self.spec.pattern_shape, f"patterns {tuple(patterns.shape)} vs spec {self.spec}"
        width = self.slot_width(patterns.shape[1])
        return self.embed_write(self._features(patterns))[..., :width].contiguous()  # only the kept values

    def attention(self, slots: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """slots (B, N, w), query features (B, Q, F) -> the read's softmax weights over the slots (B, Q, N)."""
        width = slots.shape[-1]
        keys = self.embed_query(features)[..., :width]                       # (B, Q, w)
        scores = keys @ slots.transpose(1, 2) * (self.log_scale.exp() / math.sqrt(width))  # (B, Q, N)
        return scores.softmax(dim=-1)

    def _logits(self, slots: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """slots (B, N, w), queries (B, Q, *S) -> retrieval logits (B, Q, *S)."""
        assert slots.shape[0] == queries.shape[0], f"slots {tuple(slots.shape)} vs queries {tuple(queries.shape)}"
        batch, num_queries = queries.shape[:2]
        width = slots.shape[-1]
        features = self._features(queries)                                   # (B, Q, F)
        attended = self.attention(slots, features) @ slots                   # (B, Q, w)
        attended = F.pad(attended, (0, self.settings.embedding_width - width))  # back to (B, Q, E)
        hidden = self.out(attended) + self.skip(features)                    # (B, Q, F)
        logits = self.decoder(hidden.reshape(batch * num_queries, self.feature_width))
        return logits.reshape(queries.shape)


class LearnedEmbeddingMemoryNetwork(MemoryNetwork):
    """Memory Networks whose slots hold a learned linear embedding of each pattern."""

    name = "memory_networks_learned"

    @classmethod
    def presets(cls, spec: TaskSpec, options: Any = None) -> dict[str, Preset]:
        return {name: Preset(dataclasses.replace(preset.model, learned_embedding=True), preset.train)
                for name, preset in super().presets(spec, options).items()}
