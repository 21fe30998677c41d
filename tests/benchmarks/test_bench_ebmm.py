"""Speed of the binary EBMM on CPU (`make bench`); `make test` runs each once, untimed.

Size: the quick preset's model (`ebmm.config.PRESETS["quick"]`, 8256 writable floats) on one
training batch of the quick preset (16 episodes) at N = 64 patterns.
"""
from __future__ import annotations

import torch

from ebmm.config import PRESETS
from ebmm.memory import EBMM
from membench.budget import TABLE1_BUDGET
from membench.tasks import BinaryTask
from membench.training import TrainConfig


def build(batch: int = PRESETS["quick"].train.batch_size, num_patterns: int = 64):
    torch.manual_seed(0)
    task = BinaryTask(num_patterns=num_patterns)
    episodes = task.sample(batch, torch.Generator().manual_seed(0), split="train")
    return EBMM.from_spec(task.spec, TABLE1_BUDGET, "quick"), episodes


def test_meta_training_step(benchmark):
    """One AdamW update: second-order meta-gradient through T writes and K reads, clip, step."""
    model, episodes = build()
    config: TrainConfig = model.preset.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def step() -> float:
        loss, _ = model.meta_loss(episodes.patterns, episodes.queries)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
        return loss.item()

    assert torch.isfinite(torch.tensor(benchmark(step)))


def test_write_read(benchmark):
    """Evaluation: write 16 x 64 patterns and read 16 x 64 queries (no graph through meta-parameters)."""
    model, episodes = build()
    model.eval()

    def write_read() -> torch.Tensor:
        with torch.no_grad():
            return model.read(model.write(episodes.patterns), episodes.queries)

    retrievals = benchmark(write_read)
    assert retrievals.shape == episodes.queries.shape
