"""Classical Hopfield networks with Hebb, Storkey and pseudo-inverse learning rules.

Protocol (the one that reproduces Table 1 of the EBMM paper; see
`../shared/papers/ebmm-appendix-notes.md`): patterns are coded in ±1, the weight
matrix is symmetric with a zero diagonal, and reading runs asynchronous updates in a
random order over the erased units only (known bits stay clamped; under bit flips, where
`spec.clamp_known` is False, over every unit), sweep after sweep,
until a whole sweep changes no unit (capped at `max_sweeps`). A unit whose local field
is exactly zero keeps its value; an erased unit that never moves stays at 0.5 and
counts as an error.

Memory: n(n-1)/2 free weights + n thresholds (thresholds are zero for these rules but
belong to the model's state, as in the paper's budget). `write` returns exactly these: the
strict upper triangle of the weight matrix, packed, and the thresholds; `read` unpacks the
symmetric matrix. (The pseudo-inverse projector is symmetric up to rounding; its upper
triangle is what is stored.)
"""
from __future__ import annotations

import abc

import torch

from membench.budget import hopfield_floats
from membench.errors import MembenchError
from membench.interface import AssociativeMemory, TaskSpec
from membench.options import check_positive_int


def zero_diagonal(weights: torch.Tensor) -> torch.Tensor:
    """weights (B, D, D) with the diagonal set to 0."""
    return weights - torch.diag_embed(torch.diagonal(weights, dim1=-2, dim2=-1))


class HopfieldMemory(AssociativeMemory):
    """Shared reading dynamics; subclasses define `weights(spins)`."""

    def __init__(self, spec: TaskSpec, max_sweeps: int = 100):
        super().__init__()
        if len(spec.pattern_shape) != 1:
            raise MembenchError(f"Hopfield networks take flat patterns, got shape {spec.pattern_shape}")
        check_positive_int(self.name, "max_sweeps", max_sweeps)
        self.spec, self.max_sweeps = spec, max_sweeps

    def memory_floats(self, spec: TaskSpec) -> int:
        return hopfield_floats(spec.pattern_size)

    @abc.abstractmethod
    def weights(self, spins: torch.Tensor) -> torch.Tensor:
        """spins (B, N, D) in ±1 -> symmetric weights (B, D, D) (each rule's own; the diagonal is dropped)."""

    def write(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patterns (B, N, D) -> (packed upper-triangle weights (B, D(D-1)/2), thresholds (B, D))."""
        spins = 2.0 * patterns - 1.0
        rows, cols = torch.triu_indices(spins.shape[-1], spins.shape[-1], offset=1, device=patterns.device)
        packed = self.weights(spins)[:, rows, cols]
        thresholds = torch.zeros(patterns.shape[0], patterns.shape[-1], device=patterns.device)
        return packed, thresholds

    @staticmethod
    def unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
        """packed (B, D(D-1)/2) -> symmetric weights (B, D, D) with zero diagonal."""
        rows, cols = torch.triu_indices(dim, dim, offset=1, device=packed.device)
        upper = packed.new_zeros(packed.shape[0], dim, dim)
        upper[:, rows, cols] = packed
        return upper + upper.transpose(1, 2)

    def read(self, state: tuple[torch.Tensor, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        packed, thresholds = state
        batch, num_queries, dim = queries.shape
        weights = self.unpack(packed, dim)
        spins = 2.0 * queries - 1.0          # erased entries (0.5) become 0
        free = queries == self.spec.fill_value  # (B, Q, D) units the dynamics may change
        if not self.spec.clamp_known:          # bit flips: any unit may be wrong, all of them move
            free = torch.ones_like(free)
        episode = torch.arange(batch, device=queries.device)[:, None].expand(batch, num_queries)
        # clamped units never move: visit the free ones first and stop after the largest free count
        clamped_last = (~free).float().cpu() * 2.0
        num_steps = int(free.sum(-1).max())
        for _ in range(self.max_sweeps):
            # a fresh random order of the free units per query and sweep, drawn on the CPU so devices agree
            order = (torch.rand(batch, num_queries, dim) + clamped_last).argsort(dim=-1).to(queries.device)
            changed = torch.zeros(batch, num_queries, dtype=torch.bool, device=queries.device)
            for step in range(num_steps):
                unit = order[:, :, step : step + 1]                       # (B, Q, 1)
                rows = weights[episode, unit.squeeze(-1)]                 # (B, Q, D)
                field = (rows * spins).sum(-1, keepdim=True) - thresholds.gather(1, unit.squeeze(-1)).unsqueeze(-1)
                current = spins.gather(-1, unit)
                update = free.gather(-1, unit) & (field != 0)
                new = torch.where(update, field.sign(), current)
                changed |= (new != current).squeeze(-1)
                spins.scatter_(-1, unit, new)
            if not changed.any():
                break
        return (spins + 1.0) / 2.0


class HebbHopfield(HopfieldMemory):
    """Hebb rule: W = ΞᵀΞ / n."""

    name = "hopfield_hebb"

    def weights(self, spins: torch.Tensor) -> torch.Tensor:
        return spins.transpose(1, 2) @ spins / spins.shape[-1]


class StorkeyHopfield(HopfieldMemory):
    """Storkey rule in matrix form, one pattern at a time: h = Wξ, ΔW = (ξξᵀ − ξhᵀ − hξᵀ)/n."""

    name = "hopfield_storkey"

    def weights(self, spins: torch.Tensor) -> torch.Tensor:
        batch, num_patterns, dim = spins.shape
        weights = spins.new_zeros(batch, dim, dim)
        for index in range(num_patterns):
            xi = spins[:, index, :, None]          # (B, D, 1)
            field = weights @ xi                    # (B, D, 1)
            delta = xi @ xi.transpose(1, 2) - xi @ field.transpose(1, 2) - field @ xi.transpose(1, 2)
            weights = zero_diagonal(weights + delta / dim)
        return weights


class PseudoInverseHopfield(HopfieldMemory):
    """Pseudo-inverse (projection) rule: W = Ξ Ξ⁺, the projector onto the patterns' span."""

    name = "hopfield_pseudoinverse"

    def weights(self, spins: torch.Tensor) -> torch.Tensor:
        columns = spins.transpose(1, 2)              # (B, D, N)
        return columns @ torch.linalg.pinv(columns)  # (B, D, D)
