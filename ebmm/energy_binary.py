"""Gated-RNN energy network for binary strings (EBMM paper, App. B.1).

    s_0 = 0, x̂ = 2x - 1                      # ±1 coding (ours): an erased 0.5 enters as 0
    for each of `hops` hops:
        z = [x̂, s]
        c = tanh([memory(x̂), static(z)])     # memory: Linear(D -> d), writable
        u = sigmoid(gate(z))
        s = u * c + (1 - u) * s
    E(x) = readout(s)                          # Linear(hidden -> 1)

Only `memory` (weight d x D and bias d) is writable: with D = 128 and d = 64 it holds
64 * 128 + 64 = 8256 float32 values, the Table 1 budget. Everything else is static
(meta-learned, shared by all episodes). `hidden` is the paper's 1024 by default.

The ±1 coding (`signed_input=True`, ours; the paper does not say how x enters) makes each writing gradient
of the memory a centred outer product: two random patterns' inputs overlap by 0 ± 11 of 128, where as {0, 1}
(`signed_input=False`, x̂ = x) they share about 32 (results/diagnostics/ebmm-recipes has both trained).

Linear memory units (`linear_memory=True`, ours, not the paper's): c = [memory(x̂), tanh(static(z))],
the d memory units without the tanh (as the image energy's option). On Table 1's task it trains
worse than the tanh at every N (results/diagnostics/ebmm-recipes).

`grads` gives E's gradients with respect to x and to the writable tensors of a batch of
episodes in closed form (the recurrence's backward written out as tensor operations), and
`grad_norm_grads` the writable gradients of E and of ||grad_x E||^2 (that backward's derivative
along grad_x E, in forward mode), so EBMM's inner loops need no autograd: the meta-gradient is an
ordinary first-order backward through explicit operations, which `torch.compile` can fuse.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from membench.errors import MembenchError

Hop = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # candidate c, update u, previous state (None: s_0 = 0)


class GatedRNNEnergy(nn.Module):
    """E(x; theta): x (M, D) in [0, 1] -> energies (M,). Writable: `memory.weight`, `memory.bias`."""

    writable_names: tuple[str, ...] = ("memory.weight", "memory.bias")

    def __init__(self, dim: int = 128, memory_size: int = 64, hidden: int = 1024, hops: int = 5,
                 linear_memory: bool = False, init_gain: float = 1.0, signed_input: bool = True):
        super().__init__()
        if not 0 < memory_size < hidden:
            raise MembenchError(f"ebmm: memory_size={memory_size} must lie in (0, hidden={hidden}), the memory's units "
                                f"being part of the hidden layer: give --option hidden above {memory_size}")
        if hops < 1:
            raise MembenchError(f"hops={hops} must be positive")
        self.dim, self.hidden, self.hops = dim, hidden, hops
        self.linear_memory = linear_memory  # the d memory units enter the candidate without the tanh
        self.scale, self.offset = (2.0, 1.0) if signed_input else (1.0, 0.0)  # x̂ = scale * x - offset
        self.memory = nn.Linear(dim, memory_size)                    # writable
        self.static = nn.Linear(dim + hidden, hidden - memory_size)  # static from here on
        self.gate = nn.Linear(dim + hidden, hidden)
        self.readout = nn.Linear(hidden, 1, bias=False)  # a constant offset would not change any gradient
        for layer in (self.memory, self.static, self.gate, self.readout):  # normal, std init_gain / sqrt(fan_in)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
            layer.weight.data.mul_(init_gain)  # (by 1.0: exactly the draw)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    # The recurrence is computed with two exact shortcuts: the x-halves of `static` and `gate` are
    # applied once rather than every hop (`project`), and hop 1 skips the s-halves (s_0 = 0).
    def _stacked(self) -> torch.Tensor:
        return torch.cat([self.static.weight, self.gate.weight])  # (2 hidden - d, D + hidden)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., M, D) in [0, 1] -> the x-halves of `static` and `gate`, (..., M, 2 hidden - d).

        Independent of the writable tensors: a write computes it once for all its steps."""
        assert x.shape[-1] == self.dim, f"expected patterns of size {self.dim}, got shape {tuple(x.shape)}"
        return F.linear(self.coded(x), self._stacked()[:, :self.dim], torch.cat([self.static.bias, self.gate.bias]))

    def coded(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1] -> x̂, what every layer reads of it: 2x - 1 (signed_input, an erased 0.5 as 0) or x."""
        return self.scale * x - self.offset

    def _hops(self, written: torch.Tensor, projected: torch.Tensor) -> tuple[torch.Tensor, list[Hop]]:
        """written (..., M, d), projected (..., M, 2 hidden - d) -> final state (..., M, hidden), per-hop values."""
        recurrent = self._stacked()[:, self.dim:]
        split = self.hidden - written.shape[-1]
        units = written if self.linear_memory else torch.tanh(written)  # the memory units: the same every hop
        state, hops = None, []
        for _ in range(self.hops):
            mixed = projected if state is None else projected + F.linear(state, recurrent)
            candidate = torch.cat([units, torch.tanh(mixed[..., :split])], dim=-1)
            update = torch.sigmoid(mixed[..., split:])
            hops.append((candidate, update, state))
            state = update * candidate if state is None else state + update * (candidate - state)
        return state, hops

    def _slope(self, candidate: torch.Tensor, d: int) -> torch.Tensor:
        """d candidate / d pre-activation, elementwise: 1 - c^2 (1 on linear memory units)."""
        slope = 1 - candidate * candidate
        if self.linear_memory:
            slope = torch.cat([torch.ones_like(slope[..., :d]), slope[..., d:]], dim=-1)
        return slope

    def _slope_tangent(self, candidate: torch.Tensor, t_candidate: torch.Tensor, d: int) -> torch.Tensor:
        """The tangent of `_slope` when the candidate moves along t_candidate: -2 c t_c (0 on linear units)."""
        tangent = -2 * candidate * t_candidate
        if self.linear_memory:
            tangent = torch.cat([torch.zeros_like(tangent[..., :d]), tangent[..., d:]], dim=-1)
        return tangent

    def write_preconditioner(self, x: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
        """(A^T A / N + damping I)^-1 (B, D + 1, D + 1) for the stored patterns x (B, N, D): A (B, N, D + 1) is
        what the memory layer reads of each, x̂ (`coded`) with a 1 appended for its bias."""
        inputs = F.pad(self.coded(x), (0, 1), value=1.0)
        eye = torch.eye(self.dim + 1, dtype=x.dtype, device=x.device)
        # inv_ex: no check of the result on the host (damping > 0 keeps it invertible), so a CUDA graph can hold it
        return torch.linalg.inv_ex(inputs.transpose(1, 2) @ inputs / x.shape[1] + damping * eye).inverse

    def precondition(self, updates: dict[str, torch.Tensor], inverse: torch.Tensor) -> dict[str, torch.Tensor]:
        """Updates of memory.weight (B, d, D) and memory.bias (B, d), as one (B, d, D + 1) matrix, times
        `inverse` (`write_preconditioner`)."""
        joined = torch.cat([updates["memory.weight"], updates["memory.bias"].unsqueeze(-1)], dim=-1) @ inverse
        return {"memory.weight": joined[..., :self.dim], "memory.bias": joined[..., self.dim]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, D) -> energies (M,), with this module's own writable tensors."""
        written = self.memory(self.coded(x))
        state, _ = self._hops(written, self.project(x))
        return self.readout(state).squeeze(-1)

    def _backward(self, written: torch.Tensor, projected: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, list[Hop], list[torch.Tensor]]:
        """dE/d written (..., M, d) and dE/d projected (..., M, 2 hidden - d), the forward hops and, per hop
        (last first), dE/ds after it."""
        _, hops = self._hops(written, projected)
        recurrent = self._stacked()[:, self.dim:]
        d = written.shape[-1]
        d_state = self.readout.weight[0].expand_as(hops[-1][0])  # dE/ds_H
        d_written, d_projected, d_states = 0, 0, []
        for candidate, update, previous in reversed(hops):
            d_states.append(d_state)
            d_candidate = d_state * update
            d_update = d_state * candidate if previous is None else d_state * (candidate - previous)
            d_candidate = d_candidate * self._slope(candidate, d)   # through tanh (or linear units)
            d_update = d_update * update * (1 - update)              # through sigmoid
            d_written = d_written + d_candidate[..., :d]
            d_mixed = torch.cat([d_candidate[..., d:], d_update], dim=-1)
            d_projected = d_projected + d_mixed
            if previous is not None:
                d_state = d_state * (1 - update) + d_mixed @ recurrent
        return d_written, d_projected, hops, d_states

    def _episodes_backward(self, writable: dict[str, torch.Tensor], x: torch.Tensor, projected: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Hop], list[torch.Tensor]]:
        """B episodes' writable tensors and x (B, M, D) -> x̂ (`coded`) and `_backward` of their written values."""
        weight, bias = writable["memory.weight"], writable["memory.bias"]
        assert x.dim() == 3 and weight.shape == (x.shape[0], weight.shape[1], self.dim), (
            f"x (B, M, {self.dim}) and memory.weight (B, d, {self.dim}) expected, got {tuple(x.shape)}, "
            f"{tuple(weight.shape)}")
        assert bias.shape == weight.shape[:2], (
            f"memory.bias (B, d) = {tuple(weight.shape[:2])} expected, got {tuple(bias.shape)}")
        signed = self.coded(x)
        written = torch.baddbmm(bias.unsqueeze(1), signed, weight.transpose(1, 2))  # (B, M, d)
        return (signed, *self._backward(written, self.project(x) if projected is None else projected))

    def _grad_x(self, d_written: torch.Tensor, d_projected: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """grad_x E (B, M, D) from dE/d written and dE/d projected (x enters both as x̂ = scale * x - offset)."""
        return self.scale * (torch.bmm(d_written, weight) + d_projected @ self._stacked()[:, :self.dim])

    @staticmethod
    def _writable_grads(d_written: torch.Tensor, signed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients of sum_i E(x_i) for the writable tensors from dE/d written (B, M, d) and x̂ (B, M, D)."""
        return {"memory.weight": torch.bmm(d_written.transpose(1, 2), signed), "memory.bias": d_written.sum(1)}

    def grads(self, writable: dict[str, torch.Tensor], x: torch.Tensor, projected: torch.Tensor | None = None,
              wrt_x: bool = True, wrt_writable: bool = True
              ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """Closed-form gradients for B episodes, each with its own writable tensors.

        writable: memory.weight (B, d, D), memory.bias (B, d); x (B, M, D); projected: `project(x)` if
        already computed. Returns grad_x (B, M, D), the gradient of E(x_i) with respect to x_i, and
        name -> (B, *shape), the gradient of sum_i E(x_i) with respect to each episode's writable
        tensors (either None when not asked for). Differentiable in everything (explicit operations).
        """
        signed, d_written, d_projected, _, _ = self._episodes_backward(writable, x, projected)
        grad_x = self._grad_x(d_written, d_projected, writable["memory.weight"]) if wrt_x else None
        return grad_x, self._writable_grads(d_written, signed) if wrt_writable else None

    def grad_norm_grads(self, writable: dict[str, torch.Tensor], x: torch.Tensor, projected: torch.Tensor | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """For the writing loss: the gradients of sum_i E(x_i) and of sum_i ||g_i||^2, g_i = grad_x E(x_i), with
        respect to each episode's writable tensors (name -> (B, *shape) each), in closed form.

        grad_theta ||g||^2 = 2 (d^2 E / dtheta dx) g: the derivative of the writable gradient when x moves
        along g, carried through the hops and their backward in forward mode (tangents written `t_...`).
        Explicit operations only, like `grads`, so the meta-gradient through it is first order."""
        weight = writable["memory.weight"]
        signed, d_written, d_projected, hops, d_states = self._episodes_backward(writable, x, projected)
        stacked = self._stacked()
        x_weight, recurrent = stacked[:, :self.dim], stacked[:, self.dim:]
        along = self._grad_x(d_written, d_projected, weight)  # g (B, M, D)
        d = d_written.shape[-1]
        split = self.hidden - d
        t_written = self.scale * torch.bmm(along, weight.transpose(1, 2))
        t_projected = self.scale * along @ x_weight.T
        t_hops, t_state = [], None  # forward: tangents of candidate and update per hop
        for candidate, update, previous in hops:
            t_mixed = t_projected if t_state is None else t_projected + t_state @ recurrent.T
            t_candidate = self._slope(candidate, d) * torch.cat([t_written, t_mixed[..., :split]], dim=-1)
            t_update = update * (1 - update) * t_mixed[..., split:]
            t_hops.append((t_candidate, t_update, t_state))
            if t_state is None:
                t_state = t_update * candidate + update * t_candidate
            else:
                t_state = t_state + t_update * (candidate - previous) + update * (t_candidate - t_state)
        t_d_written, t_d_state = 0, None  # backward: tangents of its quantities (dE/ds_H is constant)
        for (candidate, update, previous), (t_candidate, t_update, t_previous), d_state in zip(
                reversed(hops), reversed(t_hops), d_states):
            gap = candidate if previous is None else candidate - previous
            t_gap = t_candidate if previous is None else t_candidate - t_previous
            d_candidate, d_update = d_state * update, d_state * gap
            t_d_candidate = d_state * t_update if t_d_state is None else t_d_state * update + d_state * t_update
            t_d_update = d_state * t_gap if t_d_state is None else t_d_state * gap + d_state * t_gap
            t_d_candidate = (t_d_candidate * self._slope(candidate, d)
                             + d_candidate * self._slope_tangent(candidate, t_candidate, d))
            t_d_update = (t_d_update * update * (1 - update)
                          + d_update * (1 - 2 * update) * t_update)
            t_d_written = t_d_written + t_d_candidate[..., :d]
            if previous is not None:
                t_d_mixed = torch.cat([t_d_candidate[..., d:], t_d_update], dim=-1)
                base = -d_state * t_update if t_d_state is None else t_d_state * (1 - update) - d_state * t_update
                t_d_state = base + t_d_mixed @ recurrent
        energy = self._writable_grads(d_written, signed)
        norm = {"memory.weight": 2 * (torch.bmm(t_d_written.transpose(1, 2), signed)
                                      + self.scale * torch.bmm(d_written.transpose(1, 2), along)),
                "memory.bias": 2 * t_d_written.sum(1)}
        return energy, norm
