"""Read and meta-loss shared by the learned baselines that decode one logit per value.

A memory with `_logits(state, queries) -> (B, Q, *S)` and `write(patterns) -> state` gets from
`LogitReadout` its `read` (the logits' sigmoid) and its `meta_loss` (binary cross-entropy of the
retrievals against the written patterns); `CodecLogitReadout` adds the `config` of the memories
built on the shared pattern codec (MANN, DNC, Kanerva Machine).
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F


class LogitReadout:
    """`read` and `meta_loss` of a memory whose `_logits(state, queries)` gives a logit per value."""

    def read(self, state, queries: torch.Tensor) -> torch.Tensor:
        """state from `write`, queries (B, Q, *S) with erased entries at fill_value -> retrievals (B, Q, *S) in
        [0, 1]."""
        return torch.sigmoid(self._logits(state, queries))

    def meta_loss(self, patterns: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of the retrievals against the written patterns (B, N, *S); the retrievals."""
        logits = self._logits(self.write(patterns), queries)
        return F.binary_cross_entropy_with_logits(logits, patterns), torch.sigmoid(logits).detach()


class CodecLogitReadout(LogitReadout):
    """`LogitReadout` with the config of a memory on the shared codec: it has `cfg` (a dataclass),
    `feature_size`, `encoder` and `decoder`."""

    def config(self) -> dict:
        return {**asdict(self.cfg), "feature_size": self.feature_size,
                "encoder": type(self.encoder).__name__, "decoder": type(self.decoder).__name__}
