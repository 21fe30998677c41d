"""Differentiable Neural Computer (DNC, Graves et al. 2016, Nature) as a meta-learned memory.

Write phase: the N encoded patterns e_t are presented one per step to an LSTM controller
with input [e_t, r_{t-1}] (the previous read vectors). Its interface vector xi_t = W [h_t, e_t]
(see input_skip below) gives R read keys k^r and strengths beta^r, a write key k^w and
strength beta^w, an erase vector x (sigmoid), a write vector v, R free gates f (sigmoid),
the allocation and write gates g^a, g^w (sigmoid) and R read modes pi (softmax over
backward, content, forward); strengths are oneplus(z) = 1 + softplus(z). Each step, as in
the paper:

    content      C(M, k, beta)[i] = softmax_i(beta cos(k, M[i]))
    retention    psi_t = prod_i (1 - f^i w^{r,i}_{t-1})
    usage        u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t
    allocation   a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i],  phi = usage sorted ascending
    write        w^w_t = g^w (g^a a_t + (1 - g^a) C(M_{t-1}, k^w, beta^w))
    memory       M_t = M_{t-1} * (1 - w^w_t x^T) + w^w_t v^T
    links        L_t[i, j] = (1 - w^w_t[i] - w^w_t[j]) L_{t-1}[i, j] + w^w_t[i] p_{t-1}[j],  L_t[i, i] = 0
    precedence   p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t
    read         w^{r,i}_t = pi^i_b L_t^T w^{r,i}_{t-1} + pi^i_c C(M_t, k^{r,i}, beta^{r,i}) + pi^i_f L_t w^{r,i}_{t-1}
                 r^i_t = M_t^T w^{r,i}_t

The allocation uses u' = eps + (1 - eps) u (as DeepMind's implementation) and takes the
exclusive product as exp(cumsum(log u')): gradients flow through the sorted values, not the
permutation, and nothing waits for the host (the backward of torch.cumprod / prod checks for
zeros on the host, which would break the gpu preset's CUDA-graph capture). Where a pattern
lands (allocation follows usage), the links and the read weights depend on what was written
before and in which order: the same set written in another order gives another state.

Read phase: each query takes ONE controller step from the final (h, c) with input
[e_q, r_T], reads with its own keys and modes (content on M_T; forward / backward from the
final read weights through L_T) and never writes; the output head maps [h_q, r_q, e_q] to
the pattern logits (retrieval = sigmoid). Queries are batched against the same final state,
so they cannot see each other.

Memory (what the write phase hands to the read phase): M_T (S x W), L_T (S x S), the final
read weights (R x S) and read vectors (R x W), and the controller's (h, c) (2 x H). Usage,
precedence and the last write weights are only needed for further writes and are dropped.
`from_preset` keeps S = 48, H = 32, R = 1 and makes W as wide as fits:
S W + S^2 + R S + R W + 2H <= budget; at Table 1 (8256): 49 W + 2416 <= 8256, W = 119
(8247 floats, 9 unused).

Simplified relative to the paper: one LSTM layer (H = 32) and by default one read head;
queries do not write; no sparse link matrix; initial memory, links and weights are zero.
Changed: with `input_skip` (default) the interface and the output head also see the encoded
pattern e_t (paper: h_t only, output W_y h + W_r r), as MANN's heads do, so that a 32-unit
controller does not bottleneck what is written and the known bits of a query reach the
output; input_skip=False gives the paper's wiring.
Encoder / decoder are pluggable as in baselines.mann (defaults: bits centred to +-1; images
(C, H, W) get the shared codec of membench.encoders.image_codec).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from baselines.mann import GPU_TRAIN, IMAGE_TRAIN, PAPER_TRAIN, QUICK_CHANNELS, Centre, Unflatten
from baselines.readout import CodecLogitReadout
from membench.budget import TABLE1_NUM_PATTERNS
from membench.encoders import image_codec
from membench.errors import OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.options import check_fields

USAGE_EPS = 1e-6  # keeps usage off 0 so the log-space product of the allocation is finite


@dataclass(frozen=True)
class DNCConfig:
    num_slots: int = 48               # S, memory rows (the link matrix costs S x S of the budget)
    memory_width: int | None = None   # W, floats per slot; None: as wide as the budget allows
    controller_size: int = 32         # H, LSTM hidden units; final h and c are part of the memory
    read_heads: int = 1               # R, read heads (each keeps R x S weights and R x W vectors)
    input_skip: bool = True           # interface and output head also see e_t (False: the paper's wiring)
    channels: tuple[int, ...] = (32, 64, 96)  # images only: the shared codec's residual block widths

    def __post_init__(self) -> None:
        check_fields("dnc", self, positive=("num_slots", "memory_width", "controller_size", "read_heads"))


PRESETS: dict[str, Preset] = {
    # CPU: at least EBMM quick's training compute (9000 updates of 16 episodes; EBMM's: 7800); the N sequential
    # write steps make an update several times dearer than EBMM's on this CPU
    "quick": Preset(DNCConfig(), TrainConfig(steps=9000, batch_size=16, lr=1e-3, clip_norm=1.0, log_every=50,
                                             checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS)),
    "gpu": Preset(DNCConfig(), GPU_TRAIN),
    "paper": Preset(DNCConfig(), PAPER_TRAIN),
}
IMAGE_PRESETS: dict[str, Preset] = {
    name: Preset(DNCConfig(channels=QUICK_CHANNELS) if name == "quick" else DNCConfig(), train)
    for name, train in IMAGE_TRAIN.items()
}


@dataclass
class DNCState:
    memory: torch.Tensor        # (B, S, W)   M_T
    links: torch.Tensor         # (B, S, S)   L_T
    read_weights: torch.Tensor  # (B, R, S)   w^r_T
    read_vectors: torch.Tensor  # (B, R, W)   r_T
    controller: torch.Tensor    # (B, 2, H)   final h and c


class Interface(NamedTuple):
    """The controller's interface vector, split; leading dims (...) are the batch (and queries)."""
    read_keys: torch.Tensor       # (..., R, W)
    read_strengths: torch.Tensor  # (..., R)
    write_key: torch.Tensor       # (..., W)
    write_strength: torch.Tensor  # (..., 1)
    erase: torch.Tensor           # (..., W)
    write_vector: torch.Tensor    # (..., W)
    free_gates: torch.Tensor      # (..., R)
    alloc_gate: torch.Tensor      # (..., 1)
    write_gate: torch.Tensor      # (..., 1)
    read_modes: torch.Tensor      # (..., R, 3): backward, content, forward


def allocation_weighting(usage: torch.Tensor) -> torch.Tensor:
    """usage (B, S) in [0, 1] -> allocation a (B, S): a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]."""
    usage = USAGE_EPS + (1 - USAGE_EPS) * usage
    sorted_usage, order = torch.sort(usage, dim=-1)                       # phi: ascending usage
    exclusive = torch.cumsum(sorted_usage.log(), dim=-1) - sorted_usage.log()
    return torch.zeros_like(usage).scatter(-1, order, (1 - sorted_usage) * exclusive.exp())


def update_links(links: torch.Tensor, write: torch.Tensor, precedence: torch.Tensor) -> torch.Tensor:
    """links (B, S, S), write weights w^w_t (B, S), precedence p_{t-1} (B, S) -> L_t (B, S, S), zero diagonal."""
    assert links.shape == (*write.shape, write.shape[-1]), f"links {tuple(links.shape)} vs write {tuple(write.shape)}"
    links = (1 - write[:, :, None] - write[:, None, :]) * links + write[:, :, None] * precedence[:, None, :]
    return links.diagonal_scatter(links.new_zeros(links.shape[:-1]), dim1=1, dim2=2)


class DNC(CodecLogitReadout, AssociativeMemory):
    name = "dnc"
    trainable = True

    def __init__(self, spec: TaskSpec, config: DNCConfig = DNCConfig(memory_width=119), encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, feature_size: int | None = None):
        super().__init__()
        assert config.memory_width is not None, "memory_width must be sized (from_preset sizes it to the budget)"
        self.spec, self.cfg = spec, config
        self.encoder = encoder if encoder is not None else Centre()
        self.decoder = decoder if decoder is not None else Unflatten(spec.pattern_shape)
        self.feature_size = feature_size or spec.pattern_size
        e, h, w, r = self.feature_size, config.controller_size, config.memory_width, config.read_heads
        self.split_sizes = [r * w, r, w, 1, w, w, r, 1, 1, 3 * r]  # the Interface fields, in order
        self.controller = nn.LSTMCell(e + r * w, h)
        self.interface_head = nn.Linear(h + (e if config.input_skip else 0), sum(self.split_sizes))
        self.output_head = nn.Linear(h + r * w + (e if config.input_skip else 0), e)

    @classmethod
    def presets(cls, spec: TaskSpec, options: object = None) -> dict[str, Preset]:
        return IMAGE_PRESETS if len(spec.pattern_shape) == 3 else PRESETS

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "DNC":
        """Keep S, H and R; make the slots as wide as the budget allows (unless the preset fixes
        memory_width). Images get the shared codec at the preset's channels."""
        config = preset.model
        if config.memory_width is None:
            s, h, r = config.num_slots, config.controller_size, config.read_heads
            width = (budget - s * s - r * s - 2 * h) // (s + r)
            if width < 1:
                raise OverBudgetError(f"dnc: the budget of {budget} floats holds no memory of {s} slots beside the "
                                      f"link matrix ({s} x {s}), {r} read weights and the controller state (2 x {h})")
            config = replace(config, memory_width=width)
        if len(spec.pattern_shape) == 3:
            encoder, decoder, width = image_codec(spec.pattern_shape, config.channels)
            return cls(spec, config, encoder=encoder, decoder=decoder, feature_size=width)
        return cls(spec, config)

    def memory_floats(self, spec: TaskSpec) -> int:
        s, w, h, r = self.cfg.num_slots, self.cfg.memory_width, self.cfg.controller_size, self.cfg.read_heads
        return s * w + s * s + r * s + r * w + 2 * h

    def _interface(self, hidden: torch.Tensor, features: torch.Tensor) -> Interface:
        """hidden (..., H), features (..., E) -> the Interface, squashed as in the paper."""
        z = torch.cat([hidden, features], dim=-1) if self.cfg.input_skip else hidden
        lead, r, w = z.shape[:-1], self.cfg.read_heads, self.cfg.memory_width
        keys, strengths, wkey, wstrength, erase, vector, free, alloc, gate, modes = \
            self.interface_head(z).split(self.split_sizes, dim=-1)
        return Interface(keys.reshape(*lead, r, w), 1 + F.softplus(strengths), wkey, 1 + F.softplus(wstrength),
                         torch.sigmoid(erase), vector, torch.sigmoid(free), torch.sigmoid(alloc), torch.sigmoid(gate),
                         modes.reshape(*lead, r, 3).softmax(-1))

    @staticmethod
    def _content(keys: torch.Tensor, strengths: torch.Tensor, unit_memory: torch.Tensor) -> torch.Tensor:
        """keys (B, K, W), strengths (B, K), rows of M normalised (B, S, W) -> C(M, k, beta) (B, K, S)."""
        cos = F.normalize(keys, dim=-1, eps=1e-6) @ unit_memory.transpose(1, 2)
        return torch.softmax(strengths[..., None] * cos, dim=-1)

    def _read(self, face: Interface, memory: torch.Tensor, unit_memory: torch.Tensor, links: torch.Tensor,
              previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read weights and vectors for keys (B, *Q, R, W) from M and its normalised rows (B, S, W), L (B, S, S)
        and w^r_prev (B, R, S): weights (B, *Q, R, S), vectors (B, *Q, R, W)."""
        batch, slots, width = memory.shape
        assert previous.shape == (batch, self.cfg.read_heads, slots), f"read weights {tuple(previous.shape)}"
        lead = face.read_keys.shape[:-1]                                  # (B, *Q, R)
        content = self._content(face.read_keys.reshape(batch, -1, width), face.read_strengths.reshape(batch, -1),
                                unit_memory).view(*lead, slots)
        pad = (1,) * (len(lead) - 2)                                      # broadcast over the queries
        backward = (previous @ links).view(batch, *pad, -1, slots)        # L^T w_prev
        forward = (previous @ links.transpose(1, 2)).view(batch, *pad, -1, slots)  # L w_prev
        modes = face.read_modes
        weights = modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward
        return weights, (weights.reshape(batch, -1, slots) @ memory).view(*lead, width)

    def write(self, patterns: torch.Tensor) -> DNCState:
        """patterns (B, N, *S) -> DNCState (memory, links, read weights and vectors, controller h and c)."""
        features = self.encoder(patterns)
        batch, num_patterns, _ = features.shape
        assert features.shape[-1] == self.feature_size, \
            f"encoder gave {features.shape[-1]} features, expected {self.feature_size}"
        s, w, h, r = self.cfg.num_slots, self.cfg.memory_width, self.cfg.controller_size, self.cfg.read_heads
        memory, links = features.new_zeros(batch, s, w), features.new_zeros(batch, s, s)
        usage, precedence, write = (features.new_zeros(batch, s) for _ in range(3))
        read_weights, read_vectors = features.new_zeros(batch, r, s), features.new_zeros(batch, r, w)
        hidden, cell = features.new_zeros(batch, h), features.new_zeros(batch, h)
        unit_memory = memory                                       # rows of M normalised (zero rows stay zero)
        for t in range(num_patterns):
            hidden, cell = self.controller(torch.cat([features[:, t], read_vectors.flatten(1)], dim=-1), (hidden, cell))
            face = self._interface(hidden, features[:, t])
            retention = 1 - face.free_gates[:, 0, None] * read_weights[:, 0]                    # (B, S)
            for i in range(1, r):  # a plain product: prod's backward waits for the host
                retention = retention * (1 - face.free_gates[:, i, None] * read_weights[:, i])
            usage = (usage + write - usage * write) * retention                                  # (B, S)
            content = self._content(face.write_key[:, None], face.write_strength, unit_memory)[:, 0]  # vs M_{t-1}
            write = face.write_gate * (face.alloc_gate * allocation_weighting(usage) + (1 - face.alloc_gate) * content)
            memory = memory * (1 - write[..., None] * face.erase[:, None]) + write[..., None] * face.write_vector[:, None]
            unit_memory = F.normalize(memory, dim=-1, eps=1e-6)
            links = update_links(links, write, precedence)
            precedence = (1 - write.sum(-1, keepdim=True)) * precedence + write
            read_weights, read_vectors = self._read(face, memory, unit_memory, links, read_weights)
        return DNCState(memory, links, read_weights, read_vectors, torch.stack([hidden, cell], dim=1))

    def _logits(self, state: DNCState, queries: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, *S) -> pattern logits (B, Q, *S); one controller step per query, no writing."""
        features = self.encoder(queries)
        batch, num_queries, e = features.shape
        h, rw = self.cfg.controller_size, self.cfg.read_heads * self.cfg.memory_width
        start = state.controller[:, None].expand(batch, num_queries, 2, h).reshape(-1, 2, h)
        previous = state.read_vectors.reshape(batch, 1, rw).expand(batch, num_queries, rw)
        hidden, _ = self.controller(torch.cat([features, previous], dim=-1).reshape(-1, e + rw),
                                    (start[:, 0], start[:, 1]))
        hidden = hidden.view(batch, num_queries, h)
        unit_memory = F.normalize(state.memory, dim=-1, eps=1e-6)
        _, vectors = self._read(self._interface(hidden, features), state.memory, unit_memory, state.links,
                                state.read_weights)
        out = [hidden, vectors.flatten(2), features] if self.cfg.input_skip else [hidden, vectors.flatten(2)]
        logits = self.decoder(self.output_head(torch.cat(out, dim=-1)))
        assert logits.shape == queries.shape, f"decoder gave {tuple(logits.shape)}, expected {tuple(queries.shape)}"
        return logits

