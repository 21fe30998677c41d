"""Differentiable plasticity (Miconi et al. 2018) as an associative memory.

A recurrent layer of k tanh units whose effective weights are a fixed, meta-learned part
plus a plastic part: W_eff = w + alpha * Hebb, with learned per-connection plasticity
coefficients alpha (k x k) and a Hebbian trace updated while patterns are presented,

    y_new = tanh(y W_eff + e),   Hebb <- (1 - eta) Hebb + eta * outer(y, y_new)   (learned eta).

Memory is the Hebbian trace. A full trace over 128 units would be 128^2 = 16384 floats,
about twice the Table 1 budget (8256), so a learned encoder maps patterns to the k plastic
units and a learned decoder maps them back. The presets use `symmetric_trace` (ours): every
trace update is the symmetrised outer product, so the trace is a symmetric matrix and its upper
triangle, k(k+1)/2 floats, is the memory; from_preset picks the largest k that fits, k = 128 at
Table 1's budget exactly (128 * 129 / 2 = 8256, the budget of a Hopfield network's symmetric
weights and biases). With `symmetric_trace=false` the memory is the whole k x k trace (k = 90,
8100 floats). The presets also use `hebbian_init` (ours): meta-training starts from weights that
make the model a Hebbian memory (HEBBIAN_START), which it holds far better than what meta-training
finds from a random start.

Write phase: each pattern is clamped as input for `present_steps` steps starting from a
zero hidden state (the first step gives y = tanh(e); every further step updates Hebb),
so patterns are stored in order and older ones fade with (1 - eta): the order matters.
Read phase: each query (batched, none of them updates the trace) is clamped as input and
the plastic layer runs `read_steps` steps from y = tanh(e); the decoder gives the pattern
logits, plus a learned scalar gain times (query - fill_value), a skip that lets the known
entries of the query through so the plastic units are spent on the erased ones.

Encoder/decoder are pluggable: `encoder` maps patterns (B, N, *S) in [0, 1] to (B, N, k);
`decoder` maps (B, Q, k) to pattern logits (B, Q, *S). Defaults: Linear layers on flat
vectors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from baselines.readout import LogitReadout
from membench.budget import TABLE1_NUM_PATTERNS
from membench.errors import MembenchError, OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.options import check_fields


class FlatLinear(nn.Module):
    """Linear map on flattened trailing dims: (B, N, *in_shape) -> (B, N, *out_shape)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.linear = nn.Linear(math.prod(in_shape), math.prod(out_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2)).reshape(*x.shape[:2], *self.out_shape)


@dataclass(frozen=True)
class PlasticityConfig:
    plastic_size: int | None = None  # k plastic units; the Hebbian trace (k^2 floats, k(k+1)/2 when symmetric) is the
    #   memory. None: the largest k whose trace fits the budget (Table 1's 8256: 90 square, 128 symmetric), with
    #   hebbian_init the pattern size
    present_steps: int = 2      # steps each written pattern is clamped for (k^2 trace updates: steps - 1)
    read_steps: int = 3         # recurrent steps when reading a query
    init_eta: float = 0.05      # initial Hebbian rate (learned, kept in (0, 1)); unused with hebbian_init
    init_alpha: float = 0.01    # plasticity coefficients start uniform in [0, init_alpha); unused with hebbian_init
    symmetric_trace: bool = False  # (ours) symmetrised trace updates; the memory is the trace's upper triangle,
    #   k(k+1)/2 floats, so None picks the largest such k (128 at Table 1's 8256, not 90)
    hebbian_init: bool = False  # (ours) start as a Hebbian memory: encoder and decoder scaled identities, no fixed
    #   weights, uniform plasticity off the diagonal, a slow trace (HEBBIAN_START); needs k = the pattern size

    def __post_init__(self) -> None:
        name = "differentiable_plasticity"
        check_fields(name, self, positive=("plastic_size", "read_steps"), non_negative=("init_alpha",),
                     fractions=("init_eta",))
        if not isinstance(self.present_steps, int) or self.present_steps < 2:
            raise MembenchError(f"{name}: present_steps={self.present_steps!r} must be at least 2 "
                                f"(the first step of a pattern only sets the hidden state)")


# hebbian_init's start (results/diagnostics/plasticity-symmetric): encoder a * I with bias -a / 2 (a bit's input
# +-a / 2, an erased one's 0), plasticity c off the diagonal (a unit does not excite itself, as a Hopfield network's
# zero diagonal), Hebbian rate eta, decoder d * I. Chosen from the grid of untrained_hebbian.log for low error at
# both N = 16 and 96 among starts with c * eta large enough that an erased bit's unit moves well off 0: starts whose
# erased units stay near 0 lose their recall within a few updates (start_robustness.log)
HEBBIAN_START = {"a": 8.0, "c": 3.0, "eta": 0.001, "d": 16.0}


def trace_floats(k: int, symmetric: bool) -> int:
    """Floats of the memory: a k x k trace, or its upper triangle when symmetric."""
    return k * (k + 1) // 2 if symmetric else k * k


HEBBIAN = PlasticityConfig(symmetric_trace=True, hebbian_init=True)
PRESETS: dict[str, Preset] = {
    # Every preset: the symmetric trace, 128 units in Table 1's budget, and the Hebbian start (quick: 1.37 ... 13.32
    # bits; from the default start 8.27 ... 19.13, and with the 90 x 90 square trace 16.86 ... 24.29;
    # results/diagnostics/plasticity-symmetric).
    # CPU: at least EBMM quick's training compute (9000 updates of 16 episodes; EBMM's: 7800). At a constant lr
    # 5e-3 a 5600-update run collapsed after ~2600 updates: every N fell to 32 bits, chance (why is not measured:
    # results/diagnostics/plasticity-collapse), so the rate is lower and decays along a cosine
    "quick": Preset(HEBBIAN, TrainConfig(steps=9000, batch_size=16, lr=2e-3, clip_norm=1.0, cosine_decay=True,
                                           num_patterns=TABLE1_NUM_PATTERNS)),
    # one GPU, EBMM gpu's training compute (30,000 updates of 128 episodes)
    "gpu": Preset(HEBBIAN, TrainConfig(steps=30_000, batch_size=128, lr=3e-3, clip_norm=1.0, cosine_decay=True,
                                         log_every=50, checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS,
                                         cuda_graph=True)),
    # GPU scale, the paper's optimiser (App. D)
    "paper": Preset(HEBBIAN, TrainConfig(steps=200_000, batch_size=64, lr=5e-5, clip_norm=0.05,
                                           num_patterns=TABLE1_NUM_PATTERNS)),
}


class DifferentiablePlasticity(LogitReadout, AssociativeMemory):
    name = "differentiable_plasticity"
    trainable = True

    def __init__(self, spec: TaskSpec, config: PlasticityConfig = PlasticityConfig(plastic_size=90),
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        self.spec, self.cfg = spec, config
        k = config.plastic_size
        self.encoder = encoder if encoder is not None else FlatLinear(spec.pattern_shape, (k,))
        self.decoder = decoder if decoder is not None else FlatLinear((k,), spec.pattern_shape)
        self.weight = nn.Parameter(0.01 * torch.randn(k, k))     # fixed (meta-learned) recurrent weights
        self.alpha = nn.Parameter(config.init_alpha * torch.rand(k, k))       # per-connection plasticity coefficients
        self.eta_logit = nn.Parameter(torch.tensor(math.log(config.init_eta / (1 - config.init_eta))))
        self.query_gain = nn.Parameter(torch.tensor(1.0))         # skip: known query entries push their logits
        if config.hebbian_init:
            self._start_hebbian()
        if config.symmetric_trace:
            rows, cols = torch.triu_indices(k, k)
            unpack = torch.empty(k, k, dtype=torch.long)            # (i, j) -> index of (min, max) in the triangle
            unpack[rows, cols] = unpack[cols, rows] = torch.arange(rows.numel())
            self.register_buffer("triangle", torch.stack([rows, cols]), persistent=False)
            self.register_buffer("unpack", unpack, persistent=False)

    def _start_hebbian(self) -> None:
        """Set the weights to HEBBIAN_START: untrained, the model is then a Hebbian memory of the patterns."""
        k, size = self.cfg.plastic_size, self.spec.pattern_size
        if k != size or not all(isinstance(m, FlatLinear) for m in (self.encoder, self.decoder)):
            raise MembenchError(f"differentiable_plasticity: hebbian_init needs the default encoder and decoder and "
                                f"plastic_size equal to the pattern size ({size}), not {k} (with symmetric_trace, a "
                                f"budget of at least {trace_floats(size, True)}); give --option hebbian_init=false (the "
                                f"presets start Hebbian) to start from random weights")
        a, c, eta, d = (HEBBIAN_START[name] for name in ("a", "c", "eta", "d"))
        eye = torch.eye(k)
        with torch.no_grad():
            self.encoder.linear.weight.copy_(a * eye)
            self.encoder.linear.bias.fill_(-a * self.spec.fill_value)
            self.weight.zero_()
            self.alpha.copy_(c * (1 - eye))
            self.eta_logit.fill_(math.log(eta / (1 - eta)))
            self.decoder.linear.weight.copy_(d * eye)
            self.decoder.linear.bias.zero_()
            self.query_gain.zero_()

    @classmethod
    def presets(cls, spec: TaskSpec, options: object = None) -> dict[str, Preset]:
        return PRESETS

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "DifferentiablePlasticity":
        """The largest plastic layer whose Hebbian trace (k^2 floats, or k(k+1)/2 when symmetric) fits the
        budget, with hebbian_init at most one unit per pattern entry (unless the preset fixes k)."""
        config = preset.model
        if config.plastic_size is None:
            largest = (math.isqrt(8 * budget + 1) - 1) // 2 if config.symmetric_trace else math.isqrt(budget)
            if config.hebbian_init:  # one unit per pattern entry, however large the budget
                if largest < spec.pattern_size:
                    size = spec.pattern_size
                    raise OverBudgetError(
                        f"differentiable_plasticity: hebbian_init needs {size} plastic units, a trace of "
                        f"{trace_floats(size, config.symmetric_trace)} floats, over the "
                        f"budget of {budget}; give --option hebbian_init=false (the presets start Hebbian) to start "
                        f"{largest} units from random weights")
                largest = spec.pattern_size
            config = replace(config, plastic_size=largest)
        return cls(spec, config)

    def memory_floats(self, spec: TaskSpec) -> int:
        return trace_floats(self.cfg.plastic_size, self.cfg.symmetric_trace)

    def _encode(self, patterns: torch.Tensor) -> torch.Tensor:
        features = self.encoder(patterns)
        assert features.shape[-1] == self.cfg.plastic_size, (
            f"encoder gave {features.shape[-1]} features, expected plastic_size={self.cfg.plastic_size}")
        return features

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, N, *S) -> Hebbian trace (B, k, k), patterns presented in order; with symmetric_trace its
        upper triangle (B, k(k+1)/2), row by row."""
        features = self._encode(patterns)                           # (B, N, k)
        batch, num_patterns, k = features.shape
        eta = torch.sigmoid(self.eta_logit)
        hebb = features.new_zeros(batch, k, k)
        for t in range(num_patterns):
            inputs = features[:, t, None]                          # (B, 1, k)
            hidden = torch.tanh(inputs)
            for _ in range(self.cfg.present_steps - 1):
                new = torch.tanh(hidden @ (self.weight + self.alpha * hebb) + inputs)
                outer = hidden.transpose(1, 2) @ new                # (B, k, k)
                if self.cfg.symmetric_trace:
                    outer = (outer + outer.transpose(1, 2)) / 2
                hebb = (1 - eta) * hebb + eta * outer
                hidden = new
        return hebb[:, self.triangle[0], self.triangle[1]] if self.cfg.symmetric_trace else hebb

    def _logits(self, hebb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, *S) -> pattern logits (B, Q, *S); the trace is read, never updated."""
        inputs = self._encode(queries)                              # (B, Q, k)
        if self.cfg.symmetric_trace:
            hebb = hebb[:, self.unpack]                             # (B, k(k+1)/2) -> (B, k, k)
        effective = self.weight + self.alpha * hebb                 # (B, k, k)
        hidden = torch.tanh(inputs)
        for _ in range(self.cfg.read_steps):
            hidden = torch.tanh(hidden @ effective + inputs)
        logits = self.decoder(hidden) + self.query_gain * (queries - self.spec.fill_value)
        assert logits.shape == queries.shape, f"decoder gave {tuple(logits.shape)}, expected {tuple(queries.shape)}"
        return logits

    def config(self) -> dict:
        """The configuration, the encoder's and decoder's classes and, with hebbian_init, the start's values (part
        of the checkpoint key, so a checkpoint trained from another start is not taken for this one's)."""
        start = {"hebbian_start": dict(HEBBIAN_START)} if self.cfg.hebbian_init else {}
        return {**asdict(self.cfg), "encoder": type(self.encoder).__name__, "decoder": type(self.decoder).__name__,
                **start}
