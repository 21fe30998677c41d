"""MANN (LRUA) baseline: budget accounting, training, order sensitivity, independent queries."""
from __future__ import annotations

import pytest
import torch

from baselines.mann import MANN
from membench.budget import TABLE1_BUDGET, check_declared
from membench.errors import OverBudgetError
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def _small(num_patterns: int = 8, **options) -> tuple[MANN, BinaryTask]:
    torch.manual_seed(0)
    task = BinaryTask(num_patterns)
    options = {"num_slots": 4, "controller_size": 8, "memory_width": 16, **options}
    return MANN.from_spec(task.spec, TABLE1_BUDGET, **options), task


def test_memory_fills_table1_budget_exactly():
    spec = BinaryTask(96).spec
    model = MANN.from_spec(spec, TABLE1_BUDGET)
    assert model.cfg.num_slots == 64
    assert model.memory_floats(spec) == 64 * 128 + 2 * 32 == TABLE1_BUDGET
    assert check_declared(model, spec, TABLE1_BUDGET, "mann") == TABLE1_BUDGET
    state = model.write(BinaryTask(96).sample(2, torch.Generator().manual_seed(0)).patterns)
    carried = state.memory[0].numel() + state.hidden[0].numel() + state.cell[0].numel()
    assert carried == model.memory_floats(spec)  # the count is what the read phase receives


def test_oversized_memory_is_refused():
    spec = BinaryTask(16).spec
    model = MANN.from_spec(spec, TABLE1_BUDGET, num_slots=65)
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET, "mann")


def test_reads_are_in_unit_interval_and_queries_do_not_interact():
    model, task = _small()
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = model.write(episodes.patterns)
        together = model.read(state, episodes.queries)
        alone = torch.cat([model.read(state, episodes.queries[:, i : i + 1]) for i in range(8)], dim=1)
    assert together.shape == episodes.queries.shape
    assert ((together >= 0) & (together <= 1)).all()
    torch.testing.assert_close(together, alone)


def test_written_order_changes_memory_and_retrievals():
    model, task = _small()  # 8 patterns into 4 slots: LRUA overwrites by order
    episodes = task.sample(2, torch.Generator().manual_seed(2))
    reverse = torch.arange(7, -1, -1)
    with torch.no_grad():
        forward_state = model.write(episodes.patterns)
        backward_state = model.write(episodes.patterns[:, reverse])
        same_state = model.write(episodes.patterns)
    torch.testing.assert_close(forward_state.memory, same_state.memory)
    assert not torch.allclose(forward_state.memory, backward_state.memory, atol=1e-3)
    with torch.no_grad():
        forward = model.read(forward_state, episodes.queries)
        backward = model.read(backward_state, episodes.queries)
    assert (forward - backward).abs().max() > 1e-3


def test_meta_training_lowers_the_loss(tmp_path):
    model, task = _small(num_patterns=4)
    config = TrainConfig(steps=80, batch_size=8, lr=3e-3, clip_norm=1.0, log_every=1, checkpoint_every=1000)
    result = meta_train(model, task, config, tmp_path / "mann.pt", torch.device("cpu"), seed=0, progress=False)
    losses = [row["loss"] for row in result.curve]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    assert (tmp_path / "mann.pt").exists()


def test_image_memory_is_64_slots_of_the_point_width_plus_controller():
    """Figure 3 accounting: 64 w + 2 x 32; images go through the shared codec."""
    from membench.interface import TaskSpec

    spec = TaskSpec(pattern_shape=(3, 32, 32), num_patterns=64, binary=False)
    model = MANN.from_spec(spec, 64 * 32 + 64, "quick", memory_width=32)
    assert check_declared(model, spec, 64 * 32 + 64, "mann") == 64 * 32 + 64 and model.cfg.num_slots == 64
    images = torch.rand(2, 64, 3, 32, 32)
    with torch.no_grad():
        state = model.write(images)
        retrieved = model.read(state, images)
    assert state.memory.shape == (2, 64, 32) and retrieved.shape == images.shape
    assert model.preset.train.num_patterns is None  # images: always the task's N = 64


def test_a_closed_write_gate_puts_each_key_in_a_slot_of_its_own():
    """init_gate_bias far below 0: each write goes to the least-used slot, so with as many slots as patterns
    the memory holds every write key once, unblurred (the default gate mixes keys into the slots last read)."""
    model, task = _small(num_patterns=4, init_gate_bias=-30.0)
    patterns = task.sample(2, torch.Generator().manual_seed(0)).patterns
    state, keys, gates = model.write_trace(patterns)                              # keys (B, N, W), gates (B, N)
    memory = state.memory                                                         # (B, slots, W)
    assert gates.max() < 1e-12 and torch.equal(memory, model.write(patterns).memory)
    match = (memory[:, :, None] - keys[:, None]).abs().amax(-1) < 1e-6            # (B, slots, N)
    assert (match.sum(1) == 1).all() and (match.sum(2) == 1).all()
    blurred = _small(num_patterns=4)[0].write(patterns).memory                   # the same weights, gate at random
    assert not ((blurred[:, :, None] - keys[:, None]).abs().amax(-1) < 1e-6).any()
