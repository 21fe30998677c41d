"""Kanerva Machine (Wu, Wayne, Graves & Lillicrap 2018) as a meta-learned associative memory.

The memory is a matrix-normal distribution M ~ MN(R, U, I) over K slots of code width C:
R (K, C) is its mean, U (K, K) the covariance between slots. Every pattern x_n is encoded
to features e_n, which give an address w_n = address(e_n) (K) and a code z_n = code(e_n) (C).
Writing is the exact Bayesian (Kalman) update of the memory given the N observations
z_n = w_nᵀ M + ξ, ξ ~ N(0, σ² I), all at once from the learned prior (R₀, U₀ = u₀ I):

    Σ_c = W U₀                     (N, K)     W: the addresses as rows (N, K)
    Σ_z = W U₀ Wᵀ + σ² I           (N, N)
    R   = R₀ + Σ_cᵀ Σ_z⁻¹ (Z − W R₀)           (K, C)
    U   = U₀ − Σ_cᵀ Σ_z⁻¹ Σ_c                  (K, K)

which equals writing the patterns one at a time with the same update (the Gaussian
posterior does not depend on the order; tests check both against a per-pattern loop).
Reading a query: its features e_q give the address w_q, the memory's mean answer is
z_q = w_qᵀ R, and the output head maps [z_q, e_q] (memory read and bottom-up features, as
the Kanerva Machine's posterior over z combines both) to pattern logits; retrieval =
sigmoid(logits). Queries read the same R independently.

Simplified relative to the paper, for a retrieval benchmark trained like every other
learned row here: the addresses are deterministic (the mean of the paper's q(w | x); no
sampling), there is no variational lower bound (binary cross-entropy of the retrievals
against the written patterns, as for MANN and the DNC), one read (no iterative reading),
and U₀ is a learned multiple of the identity.

Memory (what the write phase hands to the read phase): the posterior mean R, K x C float32
values. U is what a further write would need; reading uses the mean alone, so it is
dropped. `from_preset` keeps K = num_slots and gives the code as many values as the budget
allows, C = budget // K: at Table 1's 8256 with K = 64, C = 129 (64 x 129 = 8256).

Encoder/decoder are pluggable as for MANN: flat bits are centred to ±1, images (C, H, W)
get the shared ResNet codec of App. B.2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from baselines.mann import GPU_TRAIN, IMAGE_TRAIN, PAPER_TRAIN, QUICK_CHANNELS, Centre, Unflatten
from baselines.readout import CodecLogitReadout
from membench.budget import TABLE1_NUM_PATTERNS
from membench.encoders import image_codec
from membench.errors import OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.options import check_fields

MIN_NOISE_VARIANCE = 1e-3  # floor under the learned sigma^2: keeps Σ_z's smallest eigenvalue away from 0 in float32


@dataclass(frozen=True)
class KanervaConfig:
    num_slots: int = 64            # K, rows of the memory (addresses)
    code_size: int | None = None   # C, floats per slot; None: as many as the budget allows (budget // K)
    hidden: int = 256              # width of the address network and of the output head
    prior_variance: float = 1.0    # initial u0 of the prior row covariance U0 = u0 I (learned, kept positive)
    noise_variance: float = 0.1    # initial sigma^2 of the observation noise (learned, kept positive)
    channels: tuple[int, ...] = (32, 64, 96)  # images only: the shared codec's residual block widths

    def __post_init__(self) -> None:
        check_fields("kanerva_machine", self,
                     positive=("num_slots", "code_size", "hidden", "prior_variance", "noise_variance"))


PRESETS: dict[str, Preset] = {
    # CPU: at least EBMM quick's training compute (9000 updates of 16 episodes; EBMM's: 7800); the write is one
    # batched solve
    "quick": Preset(KanervaConfig(), TrainConfig(steps=9000, batch_size=16, lr=1e-3, clip_norm=1.0, cosine_decay=True,
                                                 log_every=50, checkpoint_every=500, num_patterns=TABLE1_NUM_PATTERNS)),
    "gpu": Preset(KanervaConfig(), GPU_TRAIN),
    "paper": Preset(KanervaConfig(), PAPER_TRAIN),
}
IMAGE_PRESETS: dict[str, Preset] = {
    name: Preset(KanervaConfig(channels=QUICK_CHANNELS) if name == "quick" else KanervaConfig(), train)
    for name, train in IMAGE_TRAIN.items()
}

def bayesian_write(prior_mean: torch.Tensor, prior_cov: torch.Tensor, addresses: torch.Tensor, codes: torch.Tensor,
                   noise_variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (R, U) of M ~ MN(R0, U0, I) after observing codes = addresses M + noise.

    prior_mean (B, K, C), prior_cov (B, K, K) symmetric, addresses (B, N, K), codes (B, N, C),
    noise_variance a positive scalar tensor -> R (B, K, C), U (B, K, K).
    """
    batch, num, slots = addresses.shape
    assert prior_mean.shape[:2] == (batch, slots) and codes.shape[:2] == (batch, num), (
        f"prior {tuple(prior_mean.shape)}, addresses {tuple(addresses.shape)}, codes {tuple(codes.shape)}")
    cross = addresses @ prior_cov                                               # Σ_c (B, N, K)
    eye = torch.eye(num, dtype=codes.dtype, device=codes.device)
    observed = cross @ addresses.transpose(1, 2) + noise_variance * eye         # Σ_z (B, N, N)
    chol, _ = torch.linalg.cholesky_ex(observed)  # no error check, so no host sync; Σ_z ≥ σ² I is positive definite
    gain = torch.cholesky_solve(cross, chol).transpose(1, 2)                    # Σ_cᵀ Σ_z⁻¹ (B, K, N)
    mean = prior_mean + gain @ (codes - addresses @ prior_mean)
    cov = prior_cov - gain @ cross
    return mean, cov


class KanervaMachine(CodecLogitReadout, AssociativeMemory):
    name = "kanerva_machine"
    trainable = True

    def __init__(self, spec: TaskSpec, config: KanervaConfig = KanervaConfig(code_size=129),
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None, feature_size: int | None = None):
        super().__init__()
        assert config.code_size is not None, "code_size must be sized (from_preset sizes it to the budget)"
        self.spec, self.cfg = spec, config
        self.encoder = encoder if encoder is not None else Centre()
        self.decoder = decoder if decoder is not None else Unflatten(spec.pattern_shape)
        self.feature_size = feature_size or spec.pattern_size
        e, k, c, h = self.feature_size, config.num_slots, config.code_size, config.hidden
        self.address = nn.Sequential(nn.Linear(e, h), nn.Tanh(), nn.Linear(h, k))
        self.code = nn.Linear(e, c)
        self.output_head = nn.Sequential(nn.Linear(c + e, h), nn.ReLU(), nn.Linear(h, e))
        self.prior_mean = nn.Parameter(torch.zeros(k, c))
        self.log_prior_variance = nn.Parameter(torch.tensor(config.prior_variance).log())
        self.log_noise_variance = nn.Parameter(torch.tensor(config.noise_variance).log())

    @classmethod
    def presets(cls, spec: TaskSpec, options: object = None) -> dict[str, Preset]:
        return IMAGE_PRESETS if len(spec.pattern_shape) == 3 else PRESETS

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "KanervaMachine":
        """Keep K slots; give each the code width the budget allows (unless the preset fixes code_size)."""
        config = preset.model
        if config.code_size is None:
            if budget < config.num_slots:
                raise OverBudgetError(f"kanerva_machine: the budget of {budget} floats holds less than one value "
                                      f"for each of the {config.num_slots} slots")
            config = replace(config, code_size=budget // config.num_slots)
        if len(spec.pattern_shape) == 3:
            encoder, decoder, width = image_codec(spec.pattern_shape, config.channels)
            return cls(spec, config, encoder=encoder, decoder=decoder, feature_size=width)
        return cls(spec, config)

    def memory_floats(self, spec: TaskSpec) -> int:
        return self.cfg.num_slots * self.cfg.code_size

    def _features(self, patterns: torch.Tensor) -> torch.Tensor:
        features = self.encoder(patterns)
        assert features.shape[-1] == self.feature_size, f"encoder gave {features.shape[-1]} features, expected {self.feature_size}"
        return features

    def write(self, patterns: torch.Tensor) -> torch.Tensor:
        """patterns (B, N, *S) -> posterior mean R (B, K, C) of the memory."""
        features = self._features(patterns)
        batch = features.shape[0]
        k = self.cfg.num_slots
        prior_mean = self.prior_mean.expand(batch, *self.prior_mean.shape)
        prior_cov = self.log_prior_variance.exp() * torch.eye(k, dtype=features.dtype, device=features.device)
        mean, _ = bayesian_write(prior_mean, prior_cov.expand(batch, k, k), self.address(features),
                                 self.code(features), MIN_NOISE_VARIANCE + self.log_noise_variance.exp())
        return mean

    def _logits(self, memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """memory R (B, K, C), queries (B, Q, *S) -> pattern logits (B, Q, *S)."""
        features = self._features(queries)
        recalled = self.address(features) @ memory                                # (B, Q, C)
        logits = self.decoder(self.output_head(torch.cat([recalled, features], dim=-1)))
        assert logits.shape == queries.shape, f"decoder gave {tuple(logits.shape)}, expected {tuple(queries.shape)}"
        return logits

