"""LSTM (Hochreiter & Schmidhuber) as an associative memory: its recurrent state is the memory.

Write: the LSTM reads the N written patterns as a sequence (pattern t is step t, with a
phase flag 0); the final state (h, c) is everything it keeps. Read: every query starts
from that final state and takes one more LSTM step on the query (phase flag 1); the new
hidden state is mapped to features and decoded to logits, retrieval = sigmoid(logits).
Queries are batched by expanding the final (h, c) over the Q queries; no query sees
another, and nothing but (h, c) carries information about the written patterns.

Memory = hidden + cell = 2 * hidden_size float32 values (one layer). The budget gives
hidden_size = budget // 2 (4128 at Table 1's 8256), which the 'gpu' and 'paper' presets use; the
'quick' and 'long' presets use a smaller hidden size (under budget) so that an update stays cheap on a CPU.

The LSTM is sequential: retrievals depend on the order of the written patterns. Its inputs are the
flat patterns (feature_width = pattern size) and a phase flag; a linear layer maps the hidden state
to one logit per entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.readout import LogitReadout
from membench.budget import TABLE1_NUM_PATTERNS
from membench.errors import OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.options import check_fields


@dataclass(frozen=True)
class LSTMConfig:
    hidden_size: int | None = None  # None: as large as the budget allows (budget // 2)

    def __post_init__(self) -> None:
        check_fields("lstm", self, positive=("hidden_size",))


CPU_MODEL = LSTMConfig(hidden_size=256)  # memory 512 of 8256, so that a step stays cheap on a CPU

PRESETS: dict[str, Preset] = {
    # CPU: at least EBMM quick's training compute (9000 updates of 16 episodes; EBMM's: 7800)
    "quick": Preset(CPU_MODEL,
                    TrainConfig(steps=9000, batch_size=16, lr=1e-3, clip_norm=1.0,
                                log_every=25, checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS)),
    # CPU, hours: the quick architecture at EBMM gpu's training compute, so that the paper's rule (baselines
    # make at least EBMM's updates) holds for the LSTM on a machine without a GPU, which hidden 4128 needs
    "long": Preset(CPU_MODEL,
                   TrainConfig(steps=30_000, batch_size=128, lr=1e-3, clip_norm=1.0, cosine_decay=True, log_every=50,
                               checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS, compile=True)),
    # one GPU: the full budget, hidden 4128 (h + c = 8256), EBMM gpu's training compute
    "gpu": Preset(LSTMConfig(hidden_size=None),
                  TrainConfig(steps=30_000, batch_size=128, lr=1e-4, clip_norm=1.0, cosine_decay=True, log_every=50,
                              checkpoint_every=250, num_patterns=TABLE1_NUM_PATTERNS, cuda_graph=True)),
    # GPU: the full budget, hidden 4128 (h + c = 8256), the paper presets' 200,000 updates (a tenth of App. D's
    # 2e6; baselines made at least EBMM's updates) of twice EBMM's paper-preset episodes
    "paper": Preset(LSTMConfig(hidden_size=None),
                    TrainConfig(steps=200_000, batch_size=64, lr=1e-4, clip_norm=1.0,
                                log_every=100, checkpoint_every=1000, num_patterns=TABLE1_NUM_PATTERNS)),
}


class LSTMMemory(LogitReadout, AssociativeMemory):
    name = "lstm"
    trainable = True

    def __init__(self, spec: TaskSpec, budget: int, config: LSTMConfig = LSTMConfig()):
        super().__init__()
        self.spec, self.budget, self.settings = spec, budget, config
        self.hidden_size = config.hidden_size or budget // 2
        if self.hidden_size < 1:
            raise OverBudgetError(f"lstm: the budget of {budget} floats leaves no room for an LSTM state (h, c)")
        self.feature_width = spec.pattern_size
        self.cell = nn.LSTMCell(self.feature_width + 1, self.hidden_size)  # +1: phase flag (0 write, 1 query)
        self.out = nn.Linear(self.hidden_size, self.feature_width)

    @classmethod
    def presets(cls, spec: TaskSpec, options: Any = None) -> dict[str, Preset]:
        return PRESETS

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "LSTMMemory":
        return cls(spec, budget, preset.model)

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "budget": self.budget, "feature_width": self.feature_width}

    def memory_floats(self, spec: TaskSpec) -> int:
        return 2 * self.hidden_size  # h and c of one layer, whatever N is

    def _inputs(self, patterns: torch.Tensor, phase: float) -> torch.Tensor:
        """patterns (B, M, *S) -> LSTM inputs (B, M, feature_width + 1): features and phase flag."""
        batch, count = patterns.shape[:2]
        features = patterns.reshape(batch * count, self.feature_width)
        flag = features.new_full((batch * count, 1), phase)
        return torch.cat([features, flag], dim=-1).view(batch, count, self.feature_width + 1)

    def write(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patterns (B, N, *S), read in order t = 0..N-1 -> final state (h, c), each (B, hidden)."""
        assert patterns.shape[2:] == self.spec.pattern_shape, f"patterns {tuple(patterns.shape)} vs spec {self.spec}"
        inputs = self._inputs(patterns, 0.0)
        batch = inputs.shape[0]
        h = inputs.new_zeros(batch, self.hidden_size)
        c = inputs.new_zeros(batch, self.hidden_size)
        for t in range(inputs.shape[1]):
            h, c = self.cell(inputs[:, t], (h, c))
        return h, c

    def _logits(self, state: tuple[torch.Tensor, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """final state (h, c) (B, hidden) each, queries (B, Q, *S) -> logits (B, Q, *S)."""
        h, c = state
        batch, num_queries = queries.shape[:2]
        assert h.shape == c.shape == (batch, self.hidden_size), f"state {tuple(h.shape)} vs queries {tuple(queries.shape)}"
        inputs = self._inputs(queries, 1.0).reshape(batch * num_queries, -1)
        start = tuple(s[:, None].expand(batch, num_queries, self.hidden_size).reshape(batch * num_queries, -1)
                      for s in (h, c))
        hidden, _ = self.cell(inputs, start)                                  # (B*Q, hidden)
        logits = self.out(hidden)
        return logits.reshape(queries.shape)

