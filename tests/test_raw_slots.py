"""The raw-slot memory shows what the budget allows without learning."""
from __future__ import annotations

import torch

from baselines.raw_slots import RawSlotMemory
from membench.budget import TABLE1_BUDGET
from membench.tasks import BinaryTask


def _mean_error(num_patterns: int) -> float:
    task = BinaryTask(num_patterns=num_patterns)
    model = RawSlotMemory.from_spec(task.spec, TABLE1_BUDGET)
    episodes = task.sample(8, torch.Generator().manual_seed(num_patterns))
    retrieved = model.read(model.write(episodes.patterns), episodes.queries)
    return task.errors(retrieved, episodes.patterns).mean().item()


def test_exact_up_to_64_patterns_at_table1_budget():
    for num_patterns in (16, 32, 48, 64):
        assert _mean_error(num_patterns) == 0.0


def test_misses_unstored_patterns_beyond_capacity():
    assert _mean_error(96) > 5.0  # a third of the patterns were not stored


def test_an_unstored_pattern_keeps_its_known_bits_and_takes_its_erased_ones_from_the_nearest_slot():
    """Under erasure the query's known bits are the pattern's own, so they are kept (as every classical memory
    keeps them) and only the erased bits come from the nearest stored pattern; under bit flips nothing shown is
    sure, and the nearest slot is returned whole."""
    task = BinaryTask(num_patterns=96)
    model = RawSlotMemory.from_spec(task.spec, TABLE1_BUDGET)
    episodes = task.sample(4, torch.Generator().manual_seed(3))
    slots = model.write(episodes.patterns)
    retrieved = model.read(slots, episodes.queries)
    known = episodes.queries != task.spec.fill_value
    assert torch.equal(retrieved[known], episodes.queries[known])
    differing = ((episodes.queries[:, :, None, :] != slots[:, None, :, :]) & known[:, :, None, :]).sum(-1)
    nearest = slots.gather(1, differing.argmin(-1, keepdim=True).expand(-1, -1, slots.shape[-1]))  # (B, Q, D)
    assert torch.equal(retrieved[~known], nearest[~known])
    unstored = retrieved[:, 64:]  # the first 64 patterns fill the slots
    matches = (unstored[:, :, None, :] == slots[:, None, :, :]).all(-1).any(-1)
    assert not matches.all(), "some unstored pattern's known bits should differ from every slot"
    flips = BinaryTask(num_patterns=96, erased=0, flip=0.125)
    assert not flips.spec.clamp_known
    noisy = flips.sample(4, torch.Generator().manual_seed(3))
    flipped = RawSlotMemory.from_spec(flips.spec, TABLE1_BUDGET)
    slots = flipped.write(noisy.patterns)
    whole = flipped.read(slots, noisy.queries)
    assert (whole[:, :, None, :] == slots[:, None, :, :]).all(-1).any(-1).all()  # every answer is a stored slot


def test_memory_count_is_whole_slots_within_budget():
    model = RawSlotMemory.from_spec(BinaryTask(96).spec, TABLE1_BUDGET)
    assert model.num_slots == 64
    assert model.memory_floats(BinaryTask(96).spec) == 64 * 128 <= TABLE1_BUDGET
    assert model.memory_floats(BinaryTask(16).spec) == 16 * 128


def test_passthrough_stores_nothing_and_costs_exactly_the_erasure():
    from baselines.passthrough import PassThrough

    task = BinaryTask(16)
    model = PassThrough(task.spec)
    episodes = task.sample(4, torch.Generator().manual_seed(0))
    assert model.memory_floats(task.spec) == 0 and model.write(episodes.patterns) is None
    errors = task.errors(model.read(None, episodes.queries), episodes.patterns)
    assert torch.equal(errors, torch.full_like(errors, 64.0))  # every erased bit is an undecided 0.5
