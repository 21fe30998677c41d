"""Gated-RNN energy network for binary strings (EBMM paper, App. B.1).

    s_0 = 0
    for each of `hops` hops:
        z = [x, s]
        c = tanh([memory(x), static(z)])      # memory: Linear(D -> d), writable
        u = sigmoid(gate(z))
        s = u * c + (1 - u) * s
    E(x) = readout(s)                          # Linear(hidden -> 1)

Only `memory` (weight d x D and bias d) is writable: with D = 128 and d = 64 it holds
64 * 128 + 64 = 8256 float32 values, the Table 1 budget. Everything else is static
(meta-learned, shared by all episodes). `hidden` is the paper's 1024 by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from membench.errors import MembenchError


class GatedRNNEnergy(nn.Module):
    """E(x; theta): x (M, D) in [0, 1] -> energies (M,). Writable: `memory.weight`, `memory.bias`."""

    writable_names: tuple[str, ...] = ("memory.weight", "memory.bias")

    def __init__(self, dim: int = 128, memory_size: int = 64, hidden: int = 1024, hops: int = 5):
        super().__init__()
        if not 0 < memory_size < hidden:
            raise MembenchError(f"memory_size={memory_size} must lie in (0, hidden={hidden})")
        if hops < 1:
            raise MembenchError(f"hops={hops} must be positive")
        self.dim, self.hidden, self.hops = dim, hidden, hops
        self.memory = nn.Linear(dim, memory_size)                    # writable
        self.static = nn.Linear(dim + hidden, hidden - memory_size)  # static from here on
        self.gate = nn.Linear(dim + hidden, hidden)
        self.readout = nn.Linear(hidden, 1, bias=False)  # a constant offset would not change any gradient
        for layer in (self.memory, self.static, self.gate, self.readout):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")  # He init (App. D)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, D) -> energies (M,).

        Computed as the recurrence above, with two exact shortcuts: the x-halves of `static`
        and `gate` are applied once rather than every hop, and hop 1 skips the s-halves
        (s_0 = 0). About half the multiply-adds of the literal form at hidden = 128, hops = 2.
        """
        assert x.shape[-1] == self.dim, f"expected patterns of size {self.dim}, got shape {tuple(x.shape)}"
        x = 2 * x - 1  # ±1 coding (erased 0.5 -> 0): writing gradients are centred outer products
        weight = torch.cat([self.static.weight, self.gate.weight])      # (2 hidden - d, D + hidden)
        from_x = F.linear(x, weight[:, :self.dim], torch.cat([self.static.bias, self.gate.bias]))
        written = self.memory(x)                                          # (M, d)
        split = self.hidden - written.shape[-1]
        state = None
        for _ in range(self.hops):
            mixed = from_x if state is None else from_x + F.linear(state, weight[:, self.dim:])
            candidate = torch.tanh(torch.cat([written, mixed[..., :split]], dim=-1))
            update = torch.sigmoid(mixed[..., split:])
            state = update * candidate if state is None else state + update * (candidate - state)
        return self.readout(state).squeeze(-1)
