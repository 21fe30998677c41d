"""EBMM: meta-learned energy-based memory (Bartunov et al. 2019), generic over the energy network.

An energy network is any `nn.Module` mapping patterns (M, *S) to energies (M,) that lists
its writable parameters by name in `writable_names`; all its other parameters are static.
The memory state of an episode is its own copy of the writable tensors, so the memory
count is the number of values in those tensors.

Write (Sec. 3): T gradient steps on the writing loss over the writable tensors theta,
from the meta-learned theta_bar (the energy network's own values of those tensors):

    theta_{t+1} = theta_t - sum_term lr[t, tensor, term] * grad_theta term_t
    terms: mean_i E(x_i),  mean_i ||grad_x E(x_i)||^2 (optional),  ||theta - theta_bar||^2

The pattern terms are means over the N patterns (the paper), sums (`write_mean=False`), or sums
divided by N^p with p fixed (`write_norm_power`) or meta-learned (`learn_write_norm`, ours).

Each learning rate is softplus of a learned value, one per step, writable tensor and
loss term; the paper's alpha and beta are the ratios of these rates, so they are not
separate parameters. With `elementwise_write_lr` (ours) each step's update is further scaled
entry by entry, by exp of a learned tensor the shape of the writable one (Meta-SGD's rates).
Read (App. A): K steps of projected gradient descent on E(x) with
Nesterov momentum and non-increasing learned step sizes and momentum rates; with `read_known=False`
(ours) only the entries a query marks unknown move, where the task says the others are the pattern's.
Meta-training backpropagates the step-wise reconstruction loss (or, `stepwise_loss=False`, the last
iterate's alone) through read and write.
All inner loops run on a batch of B episodes at once. An energy with a `grads` method
(the gated RNN) gives its gradients in closed form, so the inner loops are explicit
operations (no autograd inside, `torch.compile`-able; the optional ||grad_x E||^2 term's gradient
too, `grad_norm_grads`); any other energy is vmapped over the episodes' writable
copies (torch.func.functional_call + vmap) and differentiated with torch.autograd.grad
(create_graph only while meta-training).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from membench.encoders import CodecConfig
from membench.errors import MembenchError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig, check_fields
from ebmm.energy_binary import GatedRNNEnergy
from ebmm.energy_image import ResNetConvEnergy, ResNetFCEnergy

Writable = dict[str, torch.Tensor]  # name -> (B, *shape): one copy per episode


ENERGIES = ("gated_rnn", "resnet_fc", "resnet_conv")


@dataclass(frozen=True)
class EBMMConfig:
    energy: str = "gated_rnn"     # gated_rnn (binary, App. B.1); images: resnet_fc (B.2) or resnet_conv (B.3)
    hidden: int = 1024            # static hidden size of the recurrent part (paper: 1024 binary, 512 FC, 128 conv)
    hops: int = 5                 # recurrent hops of the energy network (paper: 5 binary, 3 images)
    memory_size: int = 64         # writable units d: Linear(128 -> d) + bias = 8256 floats at d = 64
    channels: tuple[int, ...] = (32, 64, 96)  # images: residual block widths (conv energy uses the first 2)
    embedding: int = 256          # resnet_fc: code width; memory = (embedding + 1) * d
    width: int = 128              # resnet_conv: bottleneck block width
    bottleneck: int = 64          # resnet_conv: bottleneck width; memory = 2 * (9 * bottleneck + 1) * d
    readout: int = 1024           # images: hidden width of the tanh readout
    centre_memory: bool = False   # images (ours): the writable layers read their input minus a static centre,
    #   started at the training images' mean (ebmm.energy_image), so the write's step is not mostly what
    #   every image shares
    centre_tracking: float = 0.0  # resnet_fc with centre_memory (ours): after every meta-training update the
    #   centre moves this share of the way to the mean embedding of the update's stored images, the memory
    #   bias compensating (theta_bar's energies unchanged), as BatchNorm's running mean follows its
    #   features; 0: the centre moves only by its meta-gradient, and lags an encoder that training moves.
    #   At 0.1 on the paper's encoder it lowered the memory's hold on the query's own images
    #   (results/diagnostics/ebmm-images)
    linear_memory: bool = False   # (ours) the memory units skip their nonlinearity, so they cannot saturate or
    #   die: the hop's tanh (gated_rnn, resnet_fc), the ReLU after the bottleneck's 3x3 conv (resnet_conv)
    read_steps: int = 5           # K, projected Nesterov steps of reading
    write_steps: int = 3          # T, gradient steps of writing (not stated in the paper)
    grad_norm_term: bool = True   # include alpha * ||grad_x E||^2 in the writing loss
    write_mean: bool = True       # average the pattern terms over the N patterns (paper); False: sum
    write_norm_power: float | None = None  # with write_mean: divide the summed pattern terms by N ** this
    #   instead of N (0.5: by sqrt(N)); None: by N, the paper's mean
    learn_write_norm: bool = False  # meta-learn that power (from write_norm_power, or 1): how strongly a
    #   write of N patterns weighs each one, learned across the N it is trained on (ours, not the paper's)
    write_lr_init: float = 1e-4   # initial softplus learning rates of writing (paper: 1e-4)
    anchor_lr_init: float | None = None  # initial rate of the beta ||theta - theta_bar||^2 term; None:
    #   write_lr_init. A rate r scales the deviation by (1 - 2r) per step: r > 1 makes it grow
    grad_norm_lr_init: float | None = None  # initial rate of the alpha ||grad_x E||^2 term; None: write_lr_init
    elementwise_write_lr: bool = False  # (ours, as Meta-SGD) each write step's update of every writable entry is
    #   also scaled by that entry's own learned factor exp(s), s from 0: a meta-learned diagonal preconditioner
    read_step_init: float = 1.0   # initial gamma_1 of reading
    read_known: bool = True       # reading moves every entry (the paper); False: where the task allows it
    #   (spec.clamp_known), entries other than the fill value keep the query's values (ours)
    stepwise_loss: bool = True    # meta-loss on every read iterate (the paper); False: on the last only (ours)
    momentum_init: float = 0.5    # initial psi_1 of reading
    decay_init: float = 0.95      # initial sigmoid(eta_k): gamma_k / gamma_{k-1} and psi_k / psi_{k-1}

    def __post_init__(self) -> None:
        for name in ("hidden", "hops", "memory_size", "read_steps", "write_steps", "embedding", "width", "bottleneck",
                     "readout"):
            if getattr(self, name) < 1:
                raise MembenchError(f"{name}={getattr(self, name)} must be at least 1")
        check_fields("ebmm", self)
        if self.energy not in ENERGIES:
            raise MembenchError(f"unknown energy '{self.energy}'; valid: gated_rnn (flat patterns), resnet_fc and "
                                "resnet_conv (images)")
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in ("write_lr_init", "anchor_lr_init", "grad_norm_lr_init", "read_step_init"):  # softplus values
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MembenchError(f"{name}={value} must be a finite number > 0 (a softplus rate)")
        if not 0 <= self.centre_tracking <= 1:
            raise MembenchError(f"centre_tracking={self.centre_tracking} must lie in [0, 1] (the share of the way "
                                "the centre moves an update)")
        if self.centre_tracking and self.energy != "resnet_fc":
            raise MembenchError(f"centre_tracking applies to the resnet_fc energy only, not {self.energy}; drop "
                                "the option")
        if self.centre_tracking and not self.centre_memory:
            raise MembenchError("centre_tracking moves the centre of centre_memory=true, which is off; add "
                                "--option centre_memory=true, or drop centre_tracking")
        for name in ("momentum_init", "decay_init"):  # sigmoid values
            if not 0 < getattr(self, name) < 1:
                raise MembenchError(f"{name}={getattr(self, name)} must lie strictly between 0 and 1 (a sigmoid)")


PRESETS: dict[str, Preset] = {
    # CPU, on 2 cores: small hidden size, 2 hops, four write steps (with the elementwise rates below, 0.04-0.39
    # bits fewer than three at N = 48 and 64 in three seeds; five were no better) and five read steps (at 9000
    # updates 0.04-0.68 bits fewer than three at N <= 64 in two seeds, 0.3-0.75 more at N = 96;
    # results/diagnostics/ebmm-seeds), large
    # initial rates, the alpha ||grad_x E||^2 term's rate starting small (at the energy term's 3.0 it
    # kept the model from learning), a beta-term rate that starts by halving the deviation from
    # theta_bar (at 3.0 it multiplied it by -5), the power of N dividing the write's pattern terms
    # meta-learned (it settles near 0.7: the mean under-writes small N), each writable entry's write
    # steps scaled by its own learned factor (elementwise_write_lr: 0.33-0.52 bits fewer at N = 48 and 64,
    # seed for seed), a large meta learning rate decayed along a cosine, 16 episodes a step, 7800 steps (what
    # fits 15 minutes of two cores with five read steps, results/diagnostics/ebmm-recipes); the meta-loss compiled
    "quick": Preset(EBMMConfig(hidden=128, hops=2, read_steps=5, write_steps=4, grad_norm_term=True,
                               write_lr_init=3.0, grad_norm_lr_init=0.01, anchor_lr_init=0.25, read_step_init=5.0,
                               learn_write_norm=True, elementwise_write_lr=True),
                    TrainConfig(steps=7800, batch_size=16, lr=6e-3, cosine_decay=True, clip_norm=1.0, log_every=50,
                                checkpoint_every=250, num_patterns=(16, 32, 48, 64, 96), compile=True)),
    # one GPU: the quick recipe of f04edef (elementwise write rates too, but three write steps: on this CPU a
    # fourth made training take about 1.3x as long, untried at this size; three read steps, as the quick preset
    # had then) with a 4x wider energy, 8x the episodes per update and 30,000 updates (on this CPU a third hop
    # and a smaller first read step each trained worse), the meta learning rate halved for the width; each
    # update replayed from a CUDA graph (one per N), in sessions that checkpoint and resume
    "gpu": Preset(EBMMConfig(hidden=512, hops=2, read_steps=3, write_steps=3, grad_norm_term=True,
                             write_lr_init=3.0, grad_norm_lr_init=0.01, anchor_lr_init=0.25, read_step_init=5.0,
                             learn_write_norm=True, elementwise_write_lr=True),
                  TrainConfig(steps=30_000, batch_size=128, lr=3e-3, cosine_decay=True, clip_norm=1.0, log_every=50,
                              checkpoint_every=250, num_patterns=(16, 32, 48, 64, 96), cuda_graph=True)),
    # GPU scale: the paper's architecture and optimiser (App. B.1, D). Initial rates: softplus -> 1e-4
    # leaves the written field ~1e-6 (no learning signal), and a first read step above ~1 saturates
    # every bit of the 1024-unit energy, so writing starts at 0.3 and reading at 1.0.
    "paper": Preset(EBMMConfig(write_steps=3, write_lr_init=0.3, read_step_init=1.0),
                    TrainConfig(steps=200_000, batch_size=32, lr=5e-5, weight_decay=1e-6, clip_norm=0.05,
                                checkpoint_every=1000, num_patterns=(16, 32, 48, 64, 96))),
}

# Image presets, per energy (Figure 3). quick: a CPU smoke test (narrower networks: the conv energy's
# memory is 578 * d at bottleneck 32; one write step, 300 updates of 2 episodes: it learns little).
# gpu: App. B.2 / B.3 sizes on one GPU. paper: App. B.2 / B.3 sizes and the App. D optimiser.
_IMAGE_TRAIN_QUICK = TrainConfig(steps=300, batch_size=2, lr=1e-3, clip_norm=1.0, log_every=20, checkpoint_every=100)
# gpu: the paper's architectures and T = 3 write steps, trained for a bounded GPU budget, graphs replayed; meta
# learning rate 1e-3 (at 1e-4 the quick networks learned nothing in 1500 updates: results/diagnostics/ebmm-images)
_IMAGE_TRAIN_GPU = TrainConfig(steps=6000, batch_size=16, lr=1e-3, clip_norm=1.0, cosine_decay=True, log_every=50,
                               checkpoint_every=250, cuda_graph=True)
_IMAGE_TRAIN_PAPER = TrainConfig(steps=200_000, batch_size=16, lr=5e-5, weight_decay=1e-6, clip_norm=0.05,
                                 log_every=100, checkpoint_every=1000)
IMAGE_PRESETS: dict[str, dict[str, Preset]] = {  # energy -> preset name -> preset
    "resnet_fc": {
        "quick": Preset(EBMMConfig(energy="resnet_fc", channels=(16, 32, 32), hidden=128, hops=2, readout=256,
                                   write_steps=1, grad_norm_term=False, write_lr_init=1.0, read_step_init=1.0),
                        _IMAGE_TRAIN_QUICK),
        "gpu": Preset(EBMMConfig(energy="resnet_fc", hidden=512, hops=3, write_steps=3, write_lr_init=0.3),
                      _IMAGE_TRAIN_GPU),
        "paper": Preset(EBMMConfig(energy="resnet_fc", hidden=512, hops=3, write_steps=3, write_lr_init=0.3),
                        _IMAGE_TRAIN_PAPER),
    },
    "resnet_conv": {
        "quick": Preset(EBMMConfig(energy="resnet_conv", channels=(16, 32), width=64, bottleneck=32, hidden=32,
                                   hops=2, readout=256, write_steps=1, grad_norm_term=False, write_lr_init=1.0,
                                   read_step_init=1.0),
                        _IMAGE_TRAIN_QUICK),
        "gpu": Preset(EBMMConfig(energy="resnet_conv", hidden=128, hops=3, write_steps=3, write_lr_init=0.3),
                      _IMAGE_TRAIN_GPU),
        "paper": Preset(EBMMConfig(energy="resnet_conv", hidden=128, hops=3, write_steps=3, write_lr_init=0.3),
                        _IMAGE_TRAIN_PAPER),
    },
}


def build_energy(spec: TaskSpec, config: EBMMConfig) -> nn.Module:
    """The energy network named by `config.energy`, sized for the task's patterns."""
    shape = spec.pattern_shape
    if config.energy == "gated_rnn":
        if len(shape) != 1:
            raise MembenchError(f"the gated-RNN energy takes flat patterns, got {shape}")
        if config.centre_memory:
            raise MembenchError("centre_memory=True applies to the image energies (resnet_fc, resnet_conv), not "
                                "gated_rnn; drop the option")
        return GatedRNNEnergy(spec.pattern_size, config.memory_size, config.hidden, config.hops, config.linear_memory)
    if len(shape) != 3:
        raise MembenchError(f"energy '{config.energy}' takes images (C, H, W), got {shape}")
    if config.energy == "resnet_fc":
        codec = CodecConfig.for_images(shape, config.channels, config.embedding)
        return ResNetFCEnergy(codec, config.memory_size, config.hidden, config.hops, config.readout,
                              config.centre_memory, config.linear_memory)
    return ResNetConvEnergy(shape[0], shape[1], tuple(config.channels[:2]), config.width, config.bottleneck,
                            config.memory_size, config.hidden, config.hops, config.readout, config.centre_memory,
                            config.linear_memory)  # resnet_conv: EBMMConfig refuses any other name


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _logit(value: float) -> float:
    return math.log(value / (1 - value))


def _decaying(first: torch.Tensor, logits: torch.Tensor) -> list[torch.Tensor]:
    """[first, first * sigmoid(l_1), first * sigmoid(l_1) * sigmoid(l_2), ...] (non-increasing)."""
    values = [first]
    for logit in logits:
        values.append(values[-1] * torch.sigmoid(logit))
    return values


class EBMM(AssociativeMemory):
    name = "ebmm"
    trainable = True

    def __init__(self, spec: TaskSpec, energy: nn.Module, config: EBMMConfig):
        super().__init__()
        if config.write_norm_power is not None and not (config.write_mean and 0 <= config.write_norm_power <= 2):
            raise MembenchError(f"write_norm_power={config.write_norm_power} needs write_mean=True and a value in "
                                f"[0, 2] (1: the mean, 0.5: sum / sqrt(N))")
        if config.learn_write_norm and not config.write_mean:
            raise MembenchError("learn_write_norm=True needs write_mean=True (it learns the power of N that "
                                "divides the summed pattern terms)")
        self.spec, self.energy, self.cfg = spec, energy, config
        names = tuple(energy.writable_names)
        own = dict(energy.named_parameters())
        assert names and all(n in own for n in names), f"writable_names {names} must name parameters of the energy"
        self.writable_names = names
        self._closed_form = callable(getattr(energy, "grads", None)) and (  # gradients without autograd (gated RNN)
            not config.grad_norm_term or callable(getattr(energy, "grad_norm_grads", None)))
        terms = 3 if config.grad_norm_term else 2
        write_lr = torch.full((config.write_steps, len(names), terms), _inverse_softplus(config.write_lr_init))
        if config.anchor_lr_init is not None:
            write_lr[..., -1] = _inverse_softplus(config.anchor_lr_init)
        if config.grad_norm_term and config.grad_norm_lr_init is not None:
            write_lr[..., 1] = _inverse_softplus(config.grad_norm_lr_init)
        self.write_lr = nn.Parameter(write_lr)  # write_lr[0, :, -1] never learns: theta_0 = theta_bar, no deviation
        if config.elementwise_write_lr:  # log-factors (T, *shape) per writable tensor, in writable_names order
            self.write_scale = nn.ParameterList(nn.Parameter(torch.zeros(config.write_steps, *own[n].shape))
                                                for n in names)
        self.read_step = nn.Parameter(torch.tensor(_inverse_softplus(config.read_step_init)))
        self.read_step_decay = nn.Parameter(torch.full((config.read_steps - 1,), _logit(config.decay_init)))
        self.momentum = nn.Parameter(torch.tensor(_logit(config.momentum_init)))
        self.momentum_decay = nn.Parameter(torch.full((config.read_steps - 1,), _logit(config.decay_init)))
        if config.learn_write_norm:
            start = 1.0 if config.write_norm_power is None else config.write_norm_power
            self.write_norm = nn.Parameter(torch.tensor(float(start)))

    @classmethod
    def presets(cls, spec: TaskSpec, options: Mapping[str, Any]) -> dict[str, Preset]:
        """Flat patterns: the gated-RNN presets. Images (C, H, W): the presets of the ResNet energy named
        by option `energy` (resnet_fc by default)."""
        if len(spec.pattern_shape) == 1:
            return PRESETS
        energy = options.get("energy", "resnet_fc")
        if energy not in IMAGE_PRESETS:
            raise MembenchError(f"unknown image energy '{energy}'; valid: {', '.join(IMAGE_PRESETS)}")
        return IMAGE_PRESETS[energy]

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "EBMM":
        return cls(spec, build_energy(spec, preset.model), preset.model)

    def memory_floats(self, spec: TaskSpec) -> int:
        params = dict(self.energy.named_parameters())
        return sum(params[name].numel() for name in self.writable_names)

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    def initialise(self, patterns: torch.Tensor) -> None:
        """With `centre_memory`: centre the energy's writable layers on training patterns (B, N, *S)."""
        if self.cfg.centre_memory:
            self.energy.initialise(patterns.flatten(0, 1))

    def after_update(self, patterns: torch.Tensor) -> None:
        """With `centre_tracking`: move the memory's centre towards the mean embedding of the update's stored
        patterns (B, N, *S), the memory bias compensating."""
        if self.cfg.centre_tracking:
            self.energy.track_centre(patterns.flatten(0, 1), self.cfg.centre_tracking)

    # --- energy of a batch of episodes ------------------------------------------------
    def batched_energy(self, writable: Writable, x: torch.Tensor) -> torch.Tensor:
        """writable: name -> (B, *shape); x (B, M, *S) -> energies (B, M)."""
        def single(w: Writable, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.energy, w, (xb,), strict=False)
        return vmap(single)(writable, x)

    def _grad_x(self, writable: Writable, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """grad_x E for x (B, M, *S) -> same shape (episodes and patterns are independent)."""
        if self._closed_form:
            return self.energy.grads(writable, x, wrt_writable=False)[0]
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        energy = self.batched_energy(writable, x).sum()
        return torch.autograd.grad(energy, x, create_graph=create_graph)[0]

    # --- write ----------------------------------------------------------------------
    def _term_grads(self, theta: Writable, patterns: torch.Tensor, projected: torch.Tensor | None,
                    create_graph: bool) -> list[list[torch.Tensor]]:
        """Per pattern term of the writing loss (E, then ||grad_x E||^2 if on, each summed over the patterns
        and weighted by `_pattern_weight`), its gradient with respect to each writable tensor (in
        `writable_names` order), each (B, *shape). `create_graph` matters only to the autograd path."""
        names = list(self.writable_names)
        scale = self._pattern_weight(patterns.shape[1])
        if self._closed_form:  # no autograd inside: explicit operations only
            if self.cfg.grad_norm_term:
                per_term = self.energy.grad_norm_grads(theta, patterns, projected)
            else:
                per_term = (self.energy.grads(theta, patterns, projected, wrt_x=False)[1],)
            return [[grads[n] * scale for n in names] for grads in per_term]
        if self.cfg.write_mean and self.cfg.write_norm_power is None and not self.cfg.learn_write_norm:
            reduce = lambda t: t.mean(1)  # noqa: E731  (over patterns)
        else:
            reduce = lambda t: t.sum(1) * scale  # noqa: E731
        x = patterns.detach().requires_grad_(self.cfg.grad_norm_term)
        energies = self.batched_energy(theta, x)                         # (B, N)
        objectives = [reduce(energies).sum()]  # episodes are independent: their sum separates
        if self.cfg.grad_norm_term:
            grad_x = torch.autograd.grad(energies.sum(), x, create_graph=True)[0]
            objectives.append(reduce(grad_x.pow(2).flatten(2).sum(-1)).sum())
        return [list(torch.autograd.grad(objective, [theta[n] for n in names], retain_graph=True,
                                         create_graph=create_graph)) for objective in objectives]

    def _pattern_weight(self, num_patterns: int) -> float | torch.Tensor:
        """Weight of each pattern's term in the writing loss: 1 / N (mean), 1 (sum), N ** -write_norm_power,
        or N ** -(the learned power)."""
        if not self.cfg.write_mean:
            return 1
        if self.cfg.learn_write_norm:
            return torch.exp(-self.write_norm * (self.write_norm.new_ones(()) * num_patterns).log())  # compiles
        if self.cfg.write_norm_power is None:
            return 1 / num_patterns
        return num_patterns ** -self.cfg.write_norm_power

    def _write(self, patterns: torch.Tensor, create_graph: bool) -> Writable:
        """patterns (B, N, *S) -> writable copies name -> (B, *shape) after T steps."""
        assert patterns.shape[2:] == self.spec.pattern_shape, (
            f"patterns {tuple(patterns.shape)} do not match pattern shape {self.spec.pattern_shape}")
        batch = patterns.shape[0]
        params = dict(self.energy.named_parameters())
        initial = {n: params[n].unsqueeze(0).expand(batch, *params[n].shape) for n in self.writable_names}
        if not create_graph:
            initial = {n: t.detach() for n, t in initial.items()}
        track = not self._closed_form  # autograd differentiates the writing loss: theta must require grad
        theta = {n: t if create_graph else t.clone().requires_grad_(track) for n, t in initial.items()}
        rates = F.softplus(self.write_lr)
        scales = [s.exp() for s in self.write_scale] if self.cfg.elementwise_write_lr else None  # (T, *shape) each
        if not create_graph:
            rates = rates.detach()
            scales = scales and [s.detach() for s in scales]
        tensors = list(self.writable_names)
        projected = self.energy.project(patterns) if self._closed_form else None
        for step in range(self.cfg.write_steps):
            term_grads = self._term_grads(theta, patterns, projected, create_graph)
            new = {}
            for j, n in enumerate(tensors):
                update = 2 * (theta[n] - initial[n]) * rates[step, j, -1]  # grad of ||theta - theta_bar||^2
                for term, grads in enumerate(term_grads):
                    update = update + rates[step, j, term] * grads[j]
                if scales is not None:
                    update = update * scales[j][step]
                new[n] = theta[n] - update
            theta = new if create_graph else {n: t.detach().requires_grad_(track) for n, t in new.items()}
        return theta if create_graph else {n: t.detach() for n, t in theta.items()}

    def write(self, patterns: torch.Tensor) -> Writable:
        """Store patterns (B, N, *S); returns per-episode writable tensors name -> (B, *shape)."""
        with self._inner_grad():
            return self._write(patterns, create_graph=False)

    def _inner_grad(self):
        """Grad mode for write and read outside meta-training: autograd on, unless no step needs it (closed-form
        energy gradients): then the caller's mode stands, and under no_grad evaluation records no graph."""
        return contextlib.nullcontext() if self._closed_form else torch.enable_grad()

    # --- read -----------------------------------------------------------------------
    def _read(self, state: Writable, queries: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        """queries (B, Q, *S) -> the K read iterates x^(1..K), each (B, Q, *S), in [0, 1]."""
        assert queries.shape[2:] == self.spec.pattern_shape, (
            f"queries {tuple(queries.shape)} do not match pattern shape {self.spec.pattern_shape}")
        steps = _decaying(F.softplus(self.read_step), self.read_step_decay)
        momenta = _decaying(torch.sigmoid(self.momentum), self.momentum_decay)
        if not create_graph:
            steps, momenta = [s.detach() for s in steps], [m.detach() for m in momenta]
        free = None  # (B, Q, *S) 1 where reading may move the entry; None: everywhere
        if not self.cfg.read_known and self.spec.clamp_known:
            free = (queries == self.spec.fill_value).to(queries.dtype)
        x, velocity, iterates = queries, torch.zeros_like(queries), []
        for step, momentum in zip(steps, momenta):
            lookahead = (x + momentum * velocity).clamp(0, 1)
            grad = self._grad_x(state, lookahead, create_graph)
            if free is not None:  # known entries get no step and no velocity: they stay the query's
                grad = grad * free
            velocity = momentum * velocity - step * grad
            x = (x + velocity).clamp(0, 1)
            if not create_graph:
                x, velocity = x.detach(), velocity.detach()
            iterates.append(x)
        return iterates

    def read(self, state: Writable, queries: torch.Tensor) -> torch.Tensor:
        """Retrieve from queries (B, Q, *S): the last of K projected Nesterov steps on E."""
        with self._inner_grad():
            return self._read(state, queries, create_graph=False)[-1]

    # --- meta-training --------------------------------------------------------------
    def meta_loss(self, patterns: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step-wise loss sum_k mean_episodes (1/N) sum_i ||x_i - x_i^(k)||^2 (k = K alone without
        `stepwise_loss`); retrievals = x^(K)."""
        state = self._write(patterns, create_graph=True)
        iterates = self._read(state, queries, create_graph=True)
        scored = iterates if self.cfg.stepwise_loss else iterates[-1:]
        loss = sum((patterns - x).pow(2).flatten(2).sum(-1).mean() for x in scored)
        return loss, iterates[-1]
