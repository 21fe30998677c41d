"""Speed of the classical memories (`make bench`); `make test` runs each once, untimed."""
from __future__ import annotations

import pytest
import torch

from baselines.hopfield import HebbHopfield, PseudoInverseHopfield, StorkeyHopfield
from baselines.raw_slots import RawSlotMemory
from membench.budget import TABLE1_BUDGET
from membench.tasks import BinaryTask


@pytest.mark.parametrize("cls", [HebbHopfield, StorkeyHopfield, PseudoInverseHopfield, RawSlotMemory],
                         ids=lambda c: c.__name__)
def test_write_read_one_table1_cell(benchmark, cls):
    """One Table 1 cell at N = 64: 16 episodes x 64 queries (1024 queries), write + read."""
    task = BinaryTask(num_patterns=64)
    episodes = task.sample(16, torch.Generator().manual_seed(0))
    model = cls.from_spec(task.spec, TABLE1_BUDGET)

    def write_read():
        torch.manual_seed(0)
        return model.read(model.write(episodes.patterns), episodes.queries)

    retrievals = benchmark(write_read)
    assert retrievals.shape == episodes.queries.shape
