"""EBMM's configuration: `EBMMConfig` (every field an `--option`), the energy it names, and the presets.

`PRESETS` are the binary task's (the gated-RNN energy, Table 1); `IMAGE_PRESETS` the image tasks', per
energy (Figure 3). Each preset's comment says why it is what it is and where that was measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from membench.budget import TABLE1_NUM_PATTERNS
from membench.encoders import CodecConfig
from membench.errors import MembenchError
from membench.interface import Preset, TaskSpec, TrainConfig
from membench.options import check_fields, is_int
from ebmm.energy_binary import GatedRNNEnergy
from ebmm.energy_image import ResNetConvEnergy, ResNetFCEnergy


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
    signed_input: bool = True     # gated_rnn (ours): every layer reads x as 2x - 1, an erased 0.5 as 0, so the
    #   memory's writing gradients are centred outer products; False: x in [0, 1] as given (the paper does not say)
    init_gain: float = 1.0        # gated_rnn: its layers start normal with std init_gain / sqrt(fan_in); 1: gain of
    #   a linear layer; sqrt(2): He et al.'s for ReLU, what App. D's "He init" may mean, worse at every N on the
    #   quick preset (results/diagnostics/ebmm-recipes)
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
    n_scaled_rates: bool = False  # (ours) every write rate (step, writable tensor, term) is also multiplied by
    #   (N / 64) ** q, its own exponent q learned from 0: one model's write adapts to how many patterns it stores
    precondition_write: float | None = None  # (ours) the initial damping lambda of a preconditioned write: each
    #   write step's update of the memory layer [W b] is right-multiplied by (A^T A / N + lambda I)^-1, A the N
    #   stored patterns' inputs to that layer with a 1 appended (lambda learned): the write's outer products are
    #   decorrelated across the patterns, from the Hebbian-like gradient towards the projection (pseudo-inverse)
    #   rule as lambda falls. None: the paper's plain gradient step. gated_rnn only
    contrast_steps: int | None = None  # (ours, after Hopfield et al.'s 1983 unlearning and contrastive divergence)
    #   the writing loss also raises the energy at negatives: each stored pattern with a fixed random share
    #   contrast_erase of its entries erased (the fill value), then moved by the model's own first contrast_steps
    #   read steps (0: the erased patterns themselves), so the write can widen a basin where a read would leave
    #   it; where a negative reads back to its pattern the two terms pull against each other. None: off (the
    #   paper). gated_rnn only
    contrast_erase: float = 0.5   # the share of each negative's (and denoising copy's) entries erased (the task's
    #   queries erase 64 of 128)
    contrast_lr_init: float = 0.01  # initial softplus rate of that term, per write step and writable tensor
    denoise_steps: int | None = None  # (ours) the writing loss also holds the step-wise reconstruction loss of the
    #   model's own first denoise_steps read steps from copies of the stored patterns with a fixed random share
    #   contrast_erase of their entries erased (at write step t pattern i takes mask ((t + 1) N + i) mod 256: other
    #   masks at every step, except where N is a multiple of 128, where steps repeat them): the write descends the
    #   loss the read is scored on, as a memory optimised for it per episode does (results/diagnostics/ebmm-oracle).
    #   None: off (the paper). gated_rnn only; its gradient takes autograd inside the write, which torch.compile
    #   does not take (training falls back to eager with a warning; MEMBENCH_COMPILE=0 skips the attempt)
    denoise_lr_init: float = 0.01  # initial softplus rate of that term, per write step and writable tensor
    write_momentum: float | None = None  # (ours) the initial momentum of a heavy-ball write: each write step after
    #   the first also moves by this share (sigmoid, learned per step) of the step before's move, so the few
    #   steps can build up along directions the gradients keep (with one write step it has nothing to carry);
    #   None: the paper's plain steps
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
                raise MembenchError(f"ebmm: {name}={getattr(self, name)} must be at least 1")
        check_fields("ebmm", self, positive=("init_gain",), fractions=("contrast_erase",))
        if self.energy not in ENERGIES:
            raise MembenchError(f"unknown energy '{self.energy}'; valid: gated_rnn (flat patterns), resnet_fc and "
                                "resnet_conv (images)")
        object.__setattr__(self, "channels", tuple(self.channels))
        for name, off in (("init_gain", 1.0), ("signed_input", True), ("precondition_write", None),
                          ("contrast_steps", None), ("denoise_steps", None)):
            if getattr(self, name) != off and self.energy != "gated_rnn":
                raise MembenchError(f"{name} applies to the gated_rnn energy only, not {self.energy}; drop the option")
        if self.contrast_steps is not None:
            if not (is_int(self.contrast_steps) and 0 <= self.contrast_steps <= self.read_steps):
                raise MembenchError(f"contrast_steps={self.contrast_steps!r} must be null or an integer from 0 to "
                                    f"read_steps={self.read_steps} (the read steps that move each negative)")
        if self.denoise_steps is not None:
            if not (is_int(self.denoise_steps) and 1 <= self.denoise_steps <= self.read_steps):
                raise MembenchError(f"denoise_steps={self.denoise_steps!r} must be null or an integer from 1 to "
                                    f"read_steps={self.read_steps} (the read steps the denoising term scores)")
        for name in ("write_lr_init", "anchor_lr_init", "grad_norm_lr_init", "read_step_init",  # softplus values
                     "precondition_write", "contrast_lr_init", "denoise_lr_init"):
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
        for name in ("momentum_init", "decay_init", "write_momentum"):  # sigmoid values
            if getattr(self, name) is not None and not 0 < getattr(self, name) < 1:
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
    # seed for seed), a heavy-ball write from momentum 0.3 (write_momentum: lower at every N from 32 in three
    # seeds, by 0.35-0.76 bits at N = 96; from 0.5 one seed paid at N = 32-64; results/diagnostics/ebmm-seeds),
    # a large meta learning rate decayed along a cosine, 16 episodes a step, 7800 steps (inside the CPU budget
    # of 15 minutes on two cores with five read steps, results/diagnostics/ebmm-recipes); compiled
    "quick": Preset(EBMMConfig(hidden=128, hops=2, read_steps=5, write_steps=4, grad_norm_term=True,
                               write_lr_init=3.0, grad_norm_lr_init=0.01, anchor_lr_init=0.25, read_step_init=5.0,
                               learn_write_norm=True, elementwise_write_lr=True, write_momentum=0.3),
                    TrainConfig(steps=7800, batch_size=16, lr=6e-3, cosine_decay=True, clip_norm=1.0, log_every=50,
                                checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS, compile=True)),
    # one GPU: the quick recipe of f04edef (elementwise write rates too, but three write steps: a fourth costs
    # more an update, results/bench/throughput_equal_work.txt, untried at this size; three read steps, as the
    # quick preset had then) with a 4x wider energy, 8x the episodes per update and 30,000 updates (on this
    # CPU a third hop and a smaller first read step each trained worse), the meta learning rate halved for the
    # width; each update replayed from a CUDA graph (one per N), in sessions that checkpoint and resume
    "gpu": Preset(EBMMConfig(hidden=512, hops=2, read_steps=3, write_steps=3, grad_norm_term=True,
                             write_lr_init=3.0, grad_norm_lr_init=0.01, anchor_lr_init=0.25, read_step_init=5.0,
                             learn_write_norm=True, elementwise_write_lr=True),
                  TrainConfig(steps=30_000, batch_size=128, lr=3e-3, cosine_decay=True, clip_norm=1.0, log_every=50,
                              checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS, cuda_graph=True)),
    # GPU scale: the paper's architecture and optimiser (App. B.1, D), 200,000 updates (a tenth of App. D's 2e6
    # or one week; every paper preset trains as long). Initial rates: softplus -> 1e-4
    # leaves the written field ~1e-6 (no learning signal), and a first read step above ~1 saturates
    # every bit of the 1024-unit energy, so writing starts at 0.3 and reading at 1.0.
    "paper": Preset(EBMMConfig(write_steps=3, write_lr_init=0.3, read_step_init=1.0),
                    TrainConfig(steps=200_000, batch_size=32, lr=5e-5, weight_decay=1e-6, clip_norm=0.05,
                                checkpoint_every=1000, num_patterns=TABLE1_NUM_PATTERNS)),
}

# Image presets, per energy (Figure 3). quick: a CPU smoke test (narrower networks: the conv energy's
# memory is 578 * d at bottleneck 32; one write step, 300 updates of 2 episodes: it learns little).
# gpu: App. B.2 / B.3 sizes on one GPU. paper: App. B.2 / B.3 sizes and the App. D optimiser. The gpu and
# paper presets start every write rate (the energy's, the alpha ||grad_x E||^2 term's and the anchor's) at 0.3,
# not App. C's 1e-4, which leaves the written weights all but unchanged, as at the binary paper preset above.
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
        return GatedRNNEnergy(spec.pattern_size, config.memory_size, config.hidden, config.hops, config.linear_memory,
                              config.init_gain, config.signed_input)
    if len(shape) != 3:
        raise MembenchError(f"energy '{config.energy}' takes images (C, H, W), got {shape}")
    if config.energy == "resnet_fc":
        codec = CodecConfig.for_images(shape, config.channels, config.embedding)
        return ResNetFCEnergy(codec, config.memory_size, config.hidden, config.hops, config.readout,
                              config.centre_memory, config.linear_memory)
    return ResNetConvEnergy(shape[0], shape[1], tuple(config.channels[:2]), config.width, config.bottleneck,
                            config.memory_size, config.hidden, config.hops, config.readout, config.centre_memory,
                            config.linear_memory)  # resnet_conv: EBMMConfig refuses any other name

