"""Memory Networks baseline: slot budget, a set-based read, and meta-training that learns."""
from __future__ import annotations

import pytest
import torch

from baselines.memory_networks import LearnedEmbeddingMemoryNetwork, MemNetConfig, MemoryNetwork
from membench.budget import TABLE1_BUDGET, check_declared
from membench.errors import OverBudgetError
from membench.interface import TaskSpec
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def test_slots_fill_the_budget_at_96_patterns():
    spec = BinaryTask(96).spec
    model = MemoryNetwork.from_spec(spec, TABLE1_BUDGET)
    assert model.slot_width(96) == 86
    assert check_declared(model, spec, TABLE1_BUDGET, "memory_networks") == 96 * 86 == TABLE1_BUDGET
    for num_patterns in (16, 32, 48, 64):  # whole 128-wide slots, one per pattern
        assert model.memory_floats(BinaryTask(num_patterns).spec) == num_patterns * 128 <= TABLE1_BUDGET


def test_oversized_configuration_is_refused():
    spec = BinaryTask(96).spec
    model = MemoryNetwork.from_spec(spec, TABLE1_BUDGET)
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET - 1, "memory_networks")
    wide = MemoryNetwork(BinaryTask(48).spec, budget=10**6, config=MemNetConfig(embedding_width=256,
                                                                                learned_embedding=True))
    with pytest.raises(OverBudgetError):  # 48 slots of 256 values = 12288 > 8256
        check_declared(wide, BinaryTask(48).spec, TABLE1_BUDGET, "memory_networks")


def test_state_is_slots_and_read_is_in_unit_interval():
    task = BinaryTask(96)
    model = MemoryNetwork.from_spec(task.spec, TABLE1_BUDGET)
    episodes = task.sample(2, torch.Generator().manual_seed(0))
    slots = model.write(episodes.patterns)
    assert slots.shape == (2, 96, 86) and slots.numel() // 2 == model.memory_floats(task.spec)
    retrieved = model.read(slots, episodes.queries[:, :5])
    assert retrieved.shape == (2, 5, 128) and retrieved.min() >= 0 and retrieved.max() <= 1


@pytest.mark.parametrize("cls", [MemoryNetwork, LearnedEmbeddingMemoryNetwork])
def test_retrievals_do_not_depend_on_write_order(cls):
    torch.manual_seed(0)
    task = BinaryTask(32)
    model = cls.from_spec(task.spec, TABLE1_BUDGET)
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    order = torch.randperm(32)
    with torch.no_grad():
        original = model.read(model.write(episodes.patterns), episodes.queries)
        shuffled = model.read(model.write(episodes.patterns[:, order]), episodes.queries)
    torch.testing.assert_close(shuffled, original, rtol=0, atol=1e-5)


def test_paper_variant_slots_hold_the_pattern_truncated():
    task = BinaryTask(96)
    patterns = task.sample(2, torch.Generator().manual_seed(0)).patterns
    slots = MemoryNetwork.from_spec(task.spec, TABLE1_BUDGET).write(patterns)
    assert torch.equal(slots, patterns[..., :86])


@pytest.mark.parametrize("cls", [MemoryNetwork, LearnedEmbeddingMemoryNetwork])
def test_meta_training_lowers_the_loss(tmp_path, cls):
    torch.manual_seed(0)
    task = BinaryTask(8)
    model = cls.from_spec(task.spec, TABLE1_BUDGET)
    config = TrainConfig(steps=300, batch_size=8, lr=3e-3, clip_norm=1.0, log_every=10, checkpoint_every=300)
    result = meta_train(model, task, config, tmp_path / "mn.pt", torch.device("cpu"), seed=0, progress=False)
    first, last = result.curve[0], result.curve[-1]
    assert last["loss"] < 0.7 * first["loss"], result.curve
    assert last["error"] < first["error"], result.curve


def test_image_slots_hold_64_codes_of_the_budgeted_width():
    """Figure 3 accounting: 64 slots x width; the shared encoder gives 256-wide codes."""
    spec = TaskSpec(pattern_shape=(1, 32, 32), num_patterns=64, binary=True)
    model = MemoryNetwork.from_spec(spec, 64 * 48, "quick")
    assert check_declared(model, spec, 64 * 48, "memory_networks") == 64 * 48
    images = torch.rand(2, 64, 1, 32, 32).round()
    with torch.no_grad():
        slots = model.write(images)
        retrieved = model.read(slots, images)
    assert slots.shape == (2, 64, 48) and retrieved.shape == images.shape
    assert model.preset.train.steps == 1600  # the image preset, not the binary one


def test_an_identity_query_start_attends_to_the_slot_of_the_query_itself():
    """identity_query: the query embedding starts as the identity, so at a sharp start a query equal to a
    written pattern puts its weight on that pattern's slot; the rest of the weights are the random start's."""
    spec = BinaryTask(8).spec
    torch.manual_seed(0)
    model = MemoryNetwork.from_spec(spec, TABLE1_BUDGET, identity_query=True, init_scale=64.0)
    torch.manual_seed(0)
    plain = MemoryNetwork.from_spec(spec, TABLE1_BUDGET, init_scale=64.0)
    patterns = BinaryTask(8).sample(2, torch.Generator().manual_seed(0)).patterns
    weights = model.attention(model.write(patterns), model._features(patterns))     # (B, N, N)
    assert (weights.argmax(-1) == torch.arange(8)).all() and weights.diagonal(dim1=1, dim2=2).min() > 0.99
    assert torch.equal(model.out.weight, plain.out.weight) and torch.equal(model.skip.weight, plain.skip.weight)
