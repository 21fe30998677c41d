"""DNC baseline: budget accounting, allocation and links against plain loops, order, queries, training."""
from __future__ import annotations

import pytest
import torch

from baselines.dnc import DNC, allocation_weighting, update_links
from membench.budget import TABLE1_BUDGET, check_declared, measure_state
from membench.errors import OverBudgetError
from membench.interface import TaskSpec
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def _small(num_patterns: int = 8, **options) -> tuple[DNC, BinaryTask]:
    torch.manual_seed(0)
    task = BinaryTask(num_patterns)
    options = {"num_slots": 4, "controller_size": 8, "memory_width": 16, **options}
    return DNC.from_spec(task.spec, TABLE1_BUDGET, **options), task


def _per_episode_numel(state) -> int:
    return sum(t[0].numel() for t in (state.memory, state.links, state.read_weights, state.read_vectors,
                                      state.controller))


def test_memory_fills_table1_budget():
    """48 slots, H = 32, R = 1: 49 W + 2416 <= 8256 gives W = 119 (8247 floats)."""
    task = BinaryTask(96)
    model = DNC.from_spec(task.spec, TABLE1_BUDGET)
    assert model.cfg.num_slots == 48 and model.cfg.memory_width == 119
    assert model.memory_floats(task.spec) == 48 * 119 + 48 * 48 + 48 + 119 + 2 * 32 == 8247
    assert TABLE1_BUDGET - 8247 < 48 + 1  # one more column would not fit
    assert check_declared(model, task.spec, TABLE1_BUDGET, "dnc") == 8247
    with torch.no_grad():
        state = model.write(task.sample(2, torch.Generator().manual_seed(0)).patterns)
    assert measure_state(state, 2) == _per_episode_numel(state) == model.memory_floats(task.spec)


def test_several_read_heads_are_counted():
    model, task = _small(read_heads=2)
    with torch.no_grad():
        state = model.write(task.sample(3, torch.Generator().manual_seed(0)).patterns)
    assert state.read_weights.shape == (3, 2, 4) and state.read_vectors.shape == (3, 2, 16)
    floats = 4 * 16 + 4 * 4 + 2 * 4 + 2 * 16 + 2 * 8  # S W + S^2 + R S + R W + 2 H
    assert measure_state(state, 3) == _per_episode_numel(state) == model.memory_floats(task.spec) == floats


def test_oversized_memory_is_refused():
    spec = BinaryTask(16).spec
    model = DNC.from_spec(spec, TABLE1_BUDGET, memory_width=120)
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET, "dnc")
    with pytest.raises(OverBudgetError, match="dnc: the budget of 2000 floats holds no memory of 48 slots"):
        DNC.from_spec(spec, 2000)  # the 48 x 48 link matrix alone is over


@pytest.mark.parametrize("input_skip", [True, False])
def test_reads_are_in_unit_interval_and_queries_do_not_interact(input_skip):
    model, task = _small(input_skip=input_skip)
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = model.write(episodes.patterns)
        together = model.read(state, episodes.queries)
        alone = torch.cat([model.read(state, episodes.queries[:, i : i + 1]) for i in range(8)], dim=1)
    assert together.shape == episodes.queries.shape
    assert ((together >= 0) & (together <= 1)).all()
    torch.testing.assert_close(together, alone)


def test_allocation_matches_a_plain_loop():
    generator = torch.Generator().manual_seed(0)
    usage = torch.rand(4, 7, generator=generator)
    usage[1, 3] = 0.0  # a free slot takes (nearly) all the allocation
    expected = torch.zeros_like(usage)
    for b in range(usage.shape[0]):
        product = 1.0
        for j in sorted(range(usage.shape[1]), key=lambda i: usage[b, i].item()):
            expected[b, j] = (1 - usage[b, j]) * product
            product *= usage[b, j].item()
    usage.requires_grad_(True)
    allocation = allocation_weighting(usage)
    torch.testing.assert_close(allocation, expected, atol=1e-5, rtol=1e-4)
    assert allocation[1, 3] > 0.99 and (allocation.sum(-1) <= 1 + 1e-6).all()
    allocation.pow(2).sum().backward()  # gradients flow through the sorted usage
    assert torch.isfinite(usage.grad).all() and usage.grad.abs().sum() > 0


def test_link_update_matches_a_plain_loop():
    generator = torch.Generator().manual_seed(1)
    batch, slots = 2, 5
    links = torch.rand(batch, slots, slots, generator=generator) * (1 - torch.eye(slots)) / slots
    write = torch.softmax(torch.randn(batch, slots, generator=generator), -1) * 0.8
    precedence = torch.softmax(torch.randn(batch, slots, generator=generator), -1) * 0.5
    expected = torch.zeros_like(links)
    for b in range(batch):
        for i in range(slots):
            for j in range(slots):
                if i != j:
                    expected[b, i, j] = (1 - write[b, i] - write[b, j]) * links[b, i, j] + write[b, i] * precedence[b, j]
    updated = update_links(links, write, precedence)
    torch.testing.assert_close(updated, expected)
    assert (updated.diagonal(dim1=1, dim2=2) == 0).all()


def test_written_order_changes_memory_links_and_retrievals():
    model, task = _small()  # 8 patterns into 4 slots
    episodes = task.sample(2, torch.Generator().manual_seed(2))
    reverse = torch.arange(7, -1, -1)
    with torch.no_grad():
        forward_state = model.write(episodes.patterns)
        backward_state = model.write(episodes.patterns[:, reverse])
        same_state = model.write(episodes.patterns)
        forward = model.read(forward_state, episodes.queries)
        backward = model.read(backward_state, episodes.queries)
    torch.testing.assert_close(forward_state.memory, same_state.memory)
    assert not torch.allclose(forward_state.memory, backward_state.memory, atol=1e-3)
    assert not torch.allclose(forward_state.links, backward_state.links, atol=1e-4)
    assert (forward - backward).abs().max() > 1e-3


def test_no_host_synchronisation_in_training_step():
    """Nothing reads a device value back (CUDA-graph capture of the gpu preset needs this)."""
    from torch.profiler import profile

    model, task = _small(num_patterns=4, read_heads=2)
    episodes = task.sample(2, torch.Generator().manual_seed(3))
    with profile() as prof:
        loss, _ = model.meta_loss(episodes.patterns, episodes.queries)
        loss.backward()
    ops = {event.key for event in prof.key_averages()}
    assert not ops & {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}, ops


def test_meta_training_lowers_the_loss(tmp_path):
    model, task = _small(num_patterns=4)
    config = TrainConfig(steps=120, batch_size=8, lr=3e-3, clip_norm=1.0, log_every=1, checkpoint_every=1000)
    result = meta_train(model, task, config, tmp_path / "dnc.pt", torch.device("cpu"), seed=0, progress=False)
    losses = [row["loss"] for row in result.curve]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    assert (tmp_path / "dnc.pt").exists()


def test_image_memory_goes_through_the_codec():
    """Images (C, H, W): the shared codec, and 48 slots as wide as the budget allows (here W = 32)."""
    spec = TaskSpec(pattern_shape=(3, 32, 32), num_patterns=8, binary=False)
    budget = 48 * 32 + 48 * 48 + 48 + 32 + 2 * 32
    model = DNC.from_spec(spec, budget, "quick")
    assert model.cfg.memory_width == 32 and model.feature_size == 256
    assert check_declared(model, spec, budget, "dnc") == budget
    assert type(model.encoder).__name__ == "Encoder" and model.cfg.channels == (16, 32, 32)
    images = torch.rand(2, 8, 3, 32, 32)
    with torch.no_grad():
        state = model.write(images)
        retrieved = model.read(state, images)
    assert state.memory.shape == (2, 48, 32) and retrieved.shape == images.shape
    assert ((retrieved >= 0) & (retrieved <= 1)).all() and measure_state(state, 2) == budget
    assert model.preset.train.num_patterns is None  # images: always the task's N
