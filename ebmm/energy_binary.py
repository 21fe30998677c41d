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
from torch import nn


class GatedRNNEnergy(nn.Module):
    """E(x; theta): x (M, D) in [0, 1] -> energies (M,). Writable: `memory.weight`, `memory.bias`."""

    writable_names: tuple[str, ...] = ("memory.weight", "memory.bias")

    def __init__(self, dim: int = 128, memory_size: int = 64, hidden: int = 1024, hops: int = 5):
        super().__init__()
        assert 0 < memory_size < hidden, f"memory_size={memory_size} must lie in (0, hidden={hidden})"
        assert hops >= 1, f"hops={hops} must be positive"
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
        """x (M, D) -> energies (M,)."""
        assert x.shape[-1] == self.dim, f"expected patterns of size {self.dim}, got shape {tuple(x.shape)}"
        x = 2 * x - 1  # ±1 coding (erased 0.5 -> 0): writing gradients are centred outer products
        state = x.new_zeros(*x.shape[:-1], self.hidden)
        written = self.memory(x)  # depends on x only: the same in every hop
        for _ in range(self.hops):
            z = torch.cat([x, state], dim=-1)
            candidate = torch.tanh(torch.cat([written, self.static(z)], dim=-1))
            update = torch.sigmoid(self.gate(z))
            state = update * candidate + (1 - update) * state
        return self.readout(state).squeeze(-1)
