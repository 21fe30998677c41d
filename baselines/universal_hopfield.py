"""Universal Hopfield network of Millidge et al. (2022): projection(separation(similarity(M, q))).

Rule: one configurable single-step memory. With the stored patterns m_μ as ±1 rows
(x -> 2x - 1; real values in [0, 1] map into [-1, 1]) and a query q in the same coding,
restricted to its known entries k (erased entries are ignored),

    similarity  s_μ:  "dot"        Σ_k m_μk q_k
                      "euclidean"  -sqrt(Σ_k (m_μk - q_k)²)
                      "manhattan"  -Σ_k |m_μk - q_k|             (default)
    separation  w_μ:  "identity"   s_μ
                      "polynomial" sign(s_μ) |s_μ|^degree        (degree, default 3)
                      "softmax"    softmax_μ(β s_μ)              (beta, default 1; default separation)
                      "max"        1 for the first μ of largest s_μ, 0 elsewhere
    projection:       Σ_μ w_μ m_μ, the stored patterns themselves.

Identity and polynomial weights are divided by Σ_μ |w_μ| (renormalised), and for them
the distances are first shifted to closeness, s_μ + (largest possible distance): 2√k for
"euclidean" and 2k for "manhattan", so every weight is >= 0 and nearer patterns weigh
more (softmax and max are unchanged by the shift). "dot" stays signed: "dot" with
"identity" is one synchronous step of the Hebbian Hopfield network, sign Σ_μ (m_μ·q) m_μ.
Softmax and max weights already sum to 1. The retrieval (in [-1, 1]) is mapped back by
(r + 1) / 2 and known entries are returned as given (under bit flips, where `spec.clamp_known`
is False, none is kept). For binary patterns every distance is
a function of the mismatches h on the known bits (dot = k - 2h, manhattan = -2h), so
"dot" and "manhattan" give the same softmax and max retrievals.

Protocol: patterns (B, N, *S) are flattened to (B, N, D), so flat binary patterns
(Table 1) and images (Figure 3, binary or real-valued) are accepted; retrievals come back
in the query's shape. Invalid option values raise MembenchError naming the valid ones.

Budget: the state is the stored rows themselves, K = min(N, floor(budget / D)) whole
patterns of D float32 values: memory_floats = K * D. When N * D exceeds the budget only the
FIRST floor(budget / D) patterns written are kept (64 at Table 1, so at N = 96 the last 32
are dropped and their queries retrieve a mixture of the stored ones).
"""
from __future__ import annotations

from typing import Any

import torch

from baselines.modern_hopfield import StoredPatternMemory
from membench.errors import MembenchError
from membench.interface import TaskSpec
from membench.options import check_positive_number

SIMILARITIES = ("dot", "euclidean", "manhattan")
SEPARATIONS = ("identity", "polynomial", "softmax", "max")


def _choice(model: str, name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MembenchError(f"{model}: {name}={value!r} is not valid; choose one of {', '.join(valid)}")


class UniversalHopfield(StoredPatternMemory):
    """retrieval = Σ_μ separation(similarity(m_μ, q))_μ m_μ, one step, known entries clamped."""

    name = "universal_hopfield"

    def __init__(self, spec: TaskSpec, num_slots: int, similarity: str = "manhattan", separation: str = "softmax",
                 beta: float = 1.0, degree: float = 3):
        super().__init__(spec, num_slots)
        _choice(self.name, "similarity", similarity, SIMILARITIES)
        _choice(self.name, "separation", separation, SEPARATIONS)
        check_positive_number(self.name, "beta", beta)
        check_positive_number(self.name, "degree", degree)
        self.similarity, self.separation = similarity, separation
        self.beta, self.degree = float(beta), float(degree)

    def scores(self, memories: torch.Tensor, spins: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """memories (B, K, D), spins (B, Q, D) with erased entries 0, known (B, Q, D) -> similarities (B, Q, K).

        Distances are shifted to closeness (>= 0) for the identity and polynomial separations."""
        if self.similarity == "dot":
            return spins @ memories.transpose(1, 2)
        mask = known.to(memories.dtype)
        num_known = mask.sum(-1, keepdim=True)                                     # (B, Q, 1)
        gaps = (spins[:, :, None, :] - mask[:, :, None, :] * memories[:, None, :, :]).abs()  # (B, Q, K, D)
        if self.similarity == "euclidean":
            distance, largest = gaps.square().sum(-1).sqrt(), 2.0 * num_known.sqrt()
        else:
            distance, largest = gaps.sum(-1), 2.0 * num_known
        shift = largest if self.separation in ("identity", "polynomial") else 0.0
        return shift - distance

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        """similarities (B, Q, K) -> weights (B, Q, K) of the stored patterns."""
        if self.separation == "softmax":
            return torch.softmax(self.beta * scores, dim=-1)
        if self.separation == "max":
            return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).to(scores.dtype)
        if self.separation == "polynomial":
            scores = scores.sign() * scores.abs() ** self.degree
        return scores / scores.abs().sum(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)

    def retrieve(self, memories: torch.Tensor, spins: torch.Tensor, known: torch.Tensor,
                 clamped: torch.Tensor) -> torch.Tensor:
        return self.weights(self.scores(memories, spins, known)) @ memories   # (B, Q, D)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "similarity": self.similarity, "separation": self.separation,
                "beta": self.beta, "degree": self.degree}
