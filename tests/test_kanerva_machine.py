"""Kanerva Machine: the Bayesian write against a per-pattern loop, budget accounting, training."""
from __future__ import annotations

import pytest
import torch

from baselines.kanerva_machine import KanervaMachine, bayesian_write
from membench.budget import TABLE1_BUDGET, check_declared, check_measured
from membench.errors import OverBudgetError
from membench.interface import TaskSpec
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def _sequential_write(mean, cov, addresses, codes, noise):
    """The Kalman update written out for one episode, one pattern at a time (the paper's online form)."""
    mean, cov = mean.clone(), cov.clone()
    for w, z in zip(addresses, codes):
        delta = z - w @ mean                        # prediction error (C,)
        variance = w @ cov @ w + noise              # scalar
        gain = cov @ w / variance                   # (K,)
        mean = mean + torch.outer(gain, delta)
        cov = cov - torch.outer(gain, cov @ w)
    return mean, cov


def test_batched_write_equals_writing_one_pattern_at_a_time_in_any_order():
    generator = torch.Generator().manual_seed(0)
    batch, num, slots, code = 3, 7, 5, 4
    prior_mean = torch.randn(batch, slots, code, generator=generator, dtype=torch.float64)
    root = torch.randn(slots, slots, generator=generator, dtype=torch.float64)
    prior_cov = (root @ root.T + torch.eye(slots, dtype=torch.float64)).expand(batch, slots, slots)
    addresses = torch.randn(batch, num, slots, generator=generator, dtype=torch.float64)
    codes = torch.randn(batch, num, code, generator=generator, dtype=torch.float64)
    noise = torch.tensor(0.3, dtype=torch.float64)
    mean, cov = bayesian_write(prior_mean, prior_cov, addresses, codes, noise)
    shuffled = torch.randperm(num, generator=generator)
    for b in range(batch):
        for order in (torch.arange(num), shuffled):
            ref_mean, ref_cov = _sequential_write(prior_mean[b], prior_cov[b], addresses[b, order], codes[b, order], noise)
            torch.testing.assert_close(mean[b], ref_mean)
            torch.testing.assert_close(cov[b], ref_cov)


def test_codes_at_orthogonal_addresses_are_read_back_when_the_noise_vanishes():
    slots, code, num = 8, 5, 6
    addresses = torch.linalg.qr(torch.randn(slots, slots, generator=torch.Generator().manual_seed(1)))[0][:num]
    codes = torch.randn(1, num, code, generator=torch.Generator().manual_seed(2))
    mean, _ = bayesian_write(torch.zeros(1, slots, code), torch.eye(slots)[None], addresses[None], codes,
                             torch.tensor(1e-6))
    torch.testing.assert_close(addresses[None] @ mean, codes, atol=1e-4, rtol=1e-4)


def test_memory_fills_the_table1_budget_with_the_posterior_mean():
    task = BinaryTask(96)
    model = KanervaMachine.from_spec(task.spec, TABLE1_BUDGET)
    assert (model.cfg.num_slots, model.cfg.code_size) == (64, 129)
    assert check_declared(model, task.spec, TABLE1_BUDGET, "kanerva_machine") == 64 * 129 == TABLE1_BUDGET
    with torch.no_grad():
        state = model.write(task.sample(2, torch.Generator().manual_seed(0)).patterns)
    assert state.shape == (2, 64, 129)
    assert check_measured(state, 2, TABLE1_BUDGET, TABLE1_BUDGET, "kanerva_machine") == TABLE1_BUDGET


def test_a_code_wider_than_the_budget_is_refused():
    spec = BinaryTask(16).spec
    model = KanervaMachine.from_spec(spec, TABLE1_BUDGET, code_size=130)
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET, "kanerva_machine")
    with pytest.raises(OverBudgetError):
        KanervaMachine.from_spec(spec, 63)  # fewer floats than slots


def test_reads_are_in_unit_interval_and_queries_do_not_interact():
    torch.manual_seed(0)
    task = BinaryTask(8)
    model = KanervaMachine.from_spec(task.spec, 16 * 20, num_slots=16, hidden=32)
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = model.write(episodes.patterns)
        together = model.read(state, episodes.queries)
        alone = torch.cat([model.read(state, episodes.queries[:, i: i + 1]) for i in range(8)], dim=1)
        reversed_state = model.write(episodes.patterns.flip(1))
    assert ((together >= 0) & (together <= 1)).all()
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(state, reversed_state, atol=1e-5, rtol=1e-4)  # the posterior ignores the order


def test_meta_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    task = BinaryTask(4)
    model = KanervaMachine.from_spec(task.spec, 16 * 20, num_slots=16, hidden=128)
    config = TrainConfig(steps=150, batch_size=8, lr=3e-3, clip_norm=1.0, log_every=1, checkpoint_every=1000)
    result = meta_train(model, task, config, tmp_path / "km.pt", torch.device("cpu"), seed=0, progress=False)
    losses = [row["loss"] for row in result.curve]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10


def test_image_memory_goes_through_the_codec():
    """Images (C, H, W): the shared codec's encoder (quick widths) feeds the slots, the state written holds
    exactly the declared floats, and retrievals are images in [0, 1]."""
    from membench.budget import measure_state

    spec = TaskSpec(pattern_shape=(1, 32, 32), num_patterns=8, binary=True)
    model = KanervaMachine.from_spec(spec, 64 * 40, "quick")
    assert type(model.encoder).__name__ == "Encoder" and model.cfg.channels == (16, 32, 32)
    assert model.feature_size == 256 and check_declared(model, spec, 64 * 40, "kanerva_machine") == 64 * 40
    images = (torch.rand(2, 8, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        state = model.write(images)
        retrieved = model.read(state, images)
    assert measure_state(state, 2) == 64 * 40 and retrieved.shape == images.shape
    assert ((retrieved >= 0) & (retrieved <= 1)).all()
