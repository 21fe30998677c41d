"""EBMM: meta-learned energy-based memory (Bartunov et al. 2019), generic over the energy network.

An energy network is any `nn.Module` mapping patterns (M, *S) to energies (M,) that lists
its writable parameters by name in `writable_names`; all its other parameters are static.
The memory state of an episode is its own copy of the writable tensors, so the memory
count is the number of values in those tensors.

Write (Sec. 3): T gradient steps on the writing loss over the writable tensors theta,
from the meta-learned theta_bar (the energy network's own values of those tensors):

    theta_{t+1} = theta_t - sum_term lr[t, tensor, term] * grad_theta term_t
    terms: mean_i E(x_i),  mean_i ||grad_x E(x_i)||^2 (optional),  -mean_i E(n_i) (optional),
           mean_i sum_k ||x_i - read^(k)(e_i)||^2 (optional),  ||theta - theta_bar||^2

The pattern terms are means over the N patterns (the paper), sums (`write_mean=False`), or sums
divided by N^p with p fixed (`write_norm_power`) or meta-learned (`learn_write_norm`, ours).

Each learning rate is softplus of a learned value, one per step, writable tensor and
loss term; the paper's alpha and beta are the ratios of these rates, so they are not
separate parameters. The write's extensions marked "(ours)" in `EBMMConfig` (elementwise and
N-scaled rates, the preconditioned write, the contrastive and denoising terms, momentum) are described there.
Read (App. A): K steps of projected gradient descent on E(x) with
Nesterov momentum and non-increasing learned step sizes and momentum rates (`read_known=False`, ours:
only the entries a query marks unknown move, where the task says the others are the pattern's).
Meta-training backpropagates the step-wise reconstruction loss (or, `stepwise_loss=False`, the last
iterate's alone) through read and write.
All inner loops run on a batch of B episodes at once. An energy with a `grads` method
(the gated RNN) gives its gradients in closed form, so the inner loops are explicit
operations (no autograd inside but `denoise_steps`'s, `torch.compile`-able without it; the optional
||grad_x E||^2 term's gradient too, `grad_norm_grads`); any other energy is vmapped over the episodes' writable
copies (torch.func.functional_call + vmap) and differentiated with torch.autograd.grad
(create_graph only while meta-training).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from membench.errors import MembenchError
from membench.interface import AssociativeMemory, Preset, TaskSpec
from ebmm.config import IMAGE_PRESETS, PRESETS, EBMMConfig, build_energy

Writable = dict[str, torch.Tensor]  # name -> (B, *shape): one copy per episode
N_REFERENCE = 64  # n_scaled_rates: the N at which the rates are the learned softplus values themselves
CONTRAST_MASKS = 256  # contrast_steps: erasure masks drawn once (a buffer); stored pattern i is erased by mask i % this
CONTRAST_SEED = 4099  # the seed of their draw, the same for every model (not the run's seed: no stream moves)


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
        contrast, denoise = config.contrast_steps is not None, config.denoise_steps is not None
        terms = 2 + config.grad_norm_term + contrast + denoise  # E, ||grad_x E||^2, -E(n), reconstruction, anchor
        write_lr = torch.full((config.write_steps, len(names), terms), _inverse_softplus(config.write_lr_init))
        if config.anchor_lr_init is not None:
            write_lr[..., -1] = _inverse_softplus(config.anchor_lr_init)
        if config.grad_norm_term and config.grad_norm_lr_init is not None:
            write_lr[..., 1] = _inverse_softplus(config.grad_norm_lr_init)
        if contrast:
            write_lr[..., 1 + config.grad_norm_term] = _inverse_softplus(config.contrast_lr_init)
        if denoise:
            write_lr[..., -2] = _inverse_softplus(config.denoise_lr_init)
        if contrast or denoise:
            assert self._closed_form, "contrast_steps and denoise_steps need the gated_rnn energy's closed form"
            self.register_buffer("contrast_masks", self._draw_masks(spec, config.contrast_erase))
        self.write_lr = nn.Parameter(write_lr)  # write_lr[0, :, -1] never learns: theta_0 = theta_bar, no deviation
        if config.n_scaled_rates:  # exponents q of (N / N_REFERENCE) ** q, one per write rate
            self.write_lr_power = nn.Parameter(torch.zeros_like(write_lr))
        if config.elementwise_write_lr:  # log-factors (T, *shape) per writable tensor, in writable_names order
            self.write_scale = nn.ParameterList(nn.Parameter(torch.zeros(config.write_steps, *own[n].shape))
                                                for n in names)
        self._carries = config.write_momentum is not None and config.write_steps > 1  # a heavy-ball write
        if self._carries:  # logits of the momenta of write steps 2..T
            self.write_momentum = nn.Parameter(torch.full((config.write_steps - 1,), _logit(config.write_momentum)))
        self.read_step = nn.Parameter(torch.tensor(_inverse_softplus(config.read_step_init)))
        self.read_step_decay = nn.Parameter(torch.full((config.read_steps - 1,), _logit(config.decay_init)))
        self.momentum = nn.Parameter(torch.tensor(_logit(config.momentum_init)))
        self.momentum_decay = nn.Parameter(torch.full((config.read_steps - 1,), _logit(config.decay_init)))
        if config.learn_write_norm:
            start = 1.0 if config.write_norm_power is None else config.write_norm_power
            self.write_norm = nn.Parameter(torch.tensor(float(start)))
        if config.precondition_write is not None:
            assert callable(getattr(energy, "precondition", None)), "precondition_write needs the gated_rnn energy"
            self.write_damping = nn.Parameter(torch.tensor(_inverse_softplus(config.precondition_write)))

    @staticmethod
    def _draw_masks(spec: TaskSpec, share: float) -> torch.Tensor:
        """CONTRAST_MASKS masks (CONTRAST_MASKS, D) bool, each erasing round(share * D) entries at random."""
        assert len(spec.pattern_shape) == 1, f"contrast_steps needs flat patterns, not {spec.pattern_shape}"
        dim = spec.pattern_shape[0]
        order = torch.rand(CONTRAST_MASKS, dim, generator=torch.Generator().manual_seed(CONTRAST_SEED)).argsort(-1)
        return order < round(share * dim)  # the entries whose rank falls in the first share: a uniform subset

    def _erased(self, patterns: torch.Tensor, first: int) -> torch.Tensor:
        """patterns (B, N, D) with the entries of masks first + i (mod CONTRAST_MASKS) at the fill value."""
        index = (torch.arange(patterns.shape[1], device=patterns.device) + first) % CONTRAST_MASKS
        return torch.where(self.contrast_masks[index], torch.full_like(patterns, self.spec.fill_value), patterns)

    def _denoise_grads(self, theta: Writable, patterns: torch.Tensor, erased: torch.Tensor, create_graph: bool
                       ) -> dict[str, torch.Tensor]:
        """denoise_steps: gradient wrt each writable tensor (B, *shape) of sum_k sum_i ||x_i - read^(k)(e_i)||^2,
        the model's own first denoise_steps read iterates from the erased patterns e_i (B, N, D)."""
        if torch.is_inference_mode_enabled():
            raise MembenchError("denoise_steps writes by autograd, which torch.inference_mode forbids: evaluate under "
                                "torch.no_grad instead")
        with torch.enable_grad():
            held = theta if create_graph else {n: t.detach().requires_grad_(True) for n, t in theta.items()}
            iterates = self._read(held, erased, True, limit=self.cfg.denoise_steps)
            loss = sum((patterns - x).pow(2).sum() for x in iterates)  # episodes are independent: their sum separates
            grads = torch.autograd.grad(loss, [held[n] for n in self.writable_names], create_graph=create_graph)
        return dict(zip(self.writable_names, grads))

    def _negatives(self, theta: Writable, erased: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """contrast_steps: where the first contrast_steps read steps take the erased patterns (B, N, D)."""
        if self.cfg.contrast_steps == 0:
            return erased
        return self._read(theta, erased, create_graph, limit=self.cfg.contrast_steps)[-1]

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
                    create_graph: bool, erased: torch.Tensor | None = None, noisy: torch.Tensor | None = None
                    ) -> list[list[torch.Tensor]]:
        """Per pattern term of the writing loss (E, then ||grad_x E||^2 if on, then -E at the negatives if
        `contrast_steps` is set, then the reconstruction loss if `denoise_steps` is, each summed over the patterns
        and weighted by `_pattern_weight`), its gradient with respect to each writable tensor (in `writable_names`
        order), each (B, *shape). erased (B, N, D): the stored patterns with their contrast masks' entries erased,
        where the negatives start; noisy (B, N, D): this step's erased copies, where the denoising reads start."""
        names = list(self.writable_names)
        scale = self._pattern_weight(patterns.shape[1])
        if self._closed_form:  # explicit operations only (autograd inside for the denoising term alone)
            if self.cfg.grad_norm_term:
                per_term = list(self.energy.grad_norm_grads(theta, patterns, projected))
            else:
                per_term = [self.energy.grads(theta, patterns, projected, wrt_x=False)[1]]
            if erased is not None:
                pushed = self.energy.grads(theta, self._negatives(theta, erased, create_graph), wrt_x=False)[1]
                per_term.append({n: -grads for n, grads in pushed.items()})
            if noisy is not None:
                per_term.append(self._denoise_grads(theta, patterns, noisy, create_graph))
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
        if self.cfg.n_scaled_rates:  # N as a tensor, so that one compile serves every N
            log_n = (self.write_lr_power.new_ones(()) * patterns.shape[1] / N_REFERENCE).log()
            rates = rates * torch.exp(self.write_lr_power * log_n)
        scales = [s.exp() for s in self.write_scale] if self.cfg.elementwise_write_lr else None  # (T, *shape) each
        if not create_graph:
            rates = rates.detach()
            scales = scales and [s.detach() for s in scales]
        tensors = list(self.writable_names)
        projected = self.energy.project(patterns) if self._closed_form else None
        inverse = None  # precondition_write: (A^T A / N + lambda I)^-1 of the stored patterns, for every step
        if self.cfg.precondition_write is not None:
            damping = F.softplus(self.write_damping)
            inverse = self.energy.write_preconditioner(patterns, damping if create_graph else damping.detach())
        # contrast_steps: the stored patterns with their masks' entries at the fill value
        erased = self._erased(patterns, 0) if self.cfg.contrast_steps is not None else None
        momenta = torch.sigmoid(self.write_momentum) if self._carries else None
        if momenta is not None and not create_graph:
            momenta = momenta.detach()
        moved: Writable = {}  # write_momentum: the step before's move
        for step in range(self.cfg.write_steps):
            noisy = None  # denoise_steps: this step's erased copies, masks ((step + 1) * N + i) mod CONTRAST_MASKS
            if self.cfg.denoise_steps is not None:
                noisy = self._erased(patterns, (step + 1) * patterns.shape[1])
            term_grads = self._term_grads(theta, patterns, projected, create_graph, erased, noisy)
            updates = {}
            for j, n in enumerate(tensors):
                update = 2 * (theta[n] - initial[n]) * rates[step, j, -1]  # grad of ||theta - theta_bar||^2
                for term, grads in enumerate(term_grads):
                    update = update + rates[step, j, term] * grads[j]
                updates[n] = update
            if inverse is not None:
                updates = self.energy.precondition(updates, inverse)
            move = {n: updates[n] * scales[j][step] if scales is not None else updates[n]
                    for j, n in enumerate(tensors)}
            if momenta is not None:  # heavy ball: the step before's move carried on (from the second step)
                if moved:
                    move = {n: move[n] + momenta[step - 1] * moved[n] for n in tensors}
                moved = move if create_graph else {n: t.detach() for n, t in move.items()}
            new = {n: theta[n] - move[n] for n in tensors}
            theta = new if create_graph else {n: t.detach().requires_grad_(track) for n, t in new.items()}
        return theta if create_graph else {n: t.detach() for n, t in theta.items()}

    def write(self, patterns: torch.Tensor) -> Writable:
        """Store patterns (B, N, *S); returns per-episode writable tensors name -> (B, *shape)."""
        with self._inner_grad():
            return self._write(patterns, create_graph=False)

    def _inner_grad(self):
        """Grad mode for write and read outside meta-training: autograd on, unless no step needs it (closed-form
        energy gradients): then the caller's mode stands, and under no_grad evaluation records no graph (but the
        denoising term's, inside the write, freed as it returns)."""
        return contextlib.nullcontext() if self._closed_form else torch.enable_grad()

    # --- read -----------------------------------------------------------------------
    def _read(self, state: Writable, queries: torch.Tensor, create_graph: bool, limit: int | None = None
              ) -> list[torch.Tensor]:
        """queries (B, Q, *S) -> the K read iterates x^(1..K), each (B, Q, *S), in [0, 1] (the first `limit`)."""
        assert queries.shape[2:] == self.spec.pattern_shape, (
            f"queries {tuple(queries.shape)} do not match pattern shape {self.spec.pattern_shape}")
        steps = _decaying(F.softplus(self.read_step), self.read_step_decay)[:limit]
        momenta = _decaying(torch.sigmoid(self.momentum), self.momentum_decay)[:limit]
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
