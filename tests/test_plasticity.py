"""Differentiable plasticity baseline: trace size (square and symmetric), training, order sensitivity."""
from __future__ import annotations

import pytest
import torch

from baselines.plasticity import DifferentiablePlasticity
from membench.budget import TABLE1_BUDGET, check_declared
from membench.errors import MembenchError, OverBudgetError
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def test_square_trace_is_the_largest_square_within_table1_budget():
    spec = BinaryTask(32).spec
    model = DifferentiablePlasticity.from_spec(spec, TABLE1_BUDGET, symmetric_trace=False,
                                               hebbian_init=False)
    assert model.cfg.plastic_size == 90
    assert model.memory_floats(spec) == 90 * 90 <= TABLE1_BUDGET < 91 * 91
    assert check_declared(model, spec, TABLE1_BUDGET, "differentiable_plasticity") == 8100
    trace = model.write(BinaryTask(32).sample(2, torch.Generator().manual_seed(0)).patterns)
    assert trace[0].numel() == model.memory_floats(spec)  # the count is what the read phase receives


def test_oversized_trace_is_refused():
    spec = BinaryTask(16).spec
    model = DifferentiablePlasticity.from_spec(spec, TABLE1_BUDGET, symmetric_trace=False, hebbian_init=False,
                                               plastic_size=91)
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET, "differentiable_plasticity")


def test_reads_are_in_unit_interval_and_queries_do_not_interact():
    torch.manual_seed(0)
    task = BinaryTask(6)
    model = DifferentiablePlasticity.from_spec(task.spec, 400, hebbian_init=False)
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        trace = model.write(episodes.patterns)
        together = model.read(trace, episodes.queries)
        alone = torch.cat([model.read(trace, episodes.queries[:, i : i + 1]) for i in range(6)], dim=1)
    assert ((together >= 0) & (together <= 1)).all()
    torch.testing.assert_close(together, alone)


def test_written_order_changes_the_trace():
    torch.manual_seed(0)
    task = BinaryTask(6)
    model = DifferentiablePlasticity.from_spec(task.spec, 400, hebbian_init=False)
    patterns = task.sample(2, torch.Generator().manual_seed(2)).patterns
    with torch.no_grad():
        forward = model.write(patterns)
        backward = model.write(patterns.flip(1))
    assert not torch.allclose(forward, backward, atol=1e-6)


def test_meta_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    task = BinaryTask(4)
    model = DifferentiablePlasticity.from_spec(task.spec, 400, hebbian_init=False)
    config = TrainConfig(steps=150, batch_size=8, lr=1e-2, clip_norm=1.0, log_every=1, checkpoint_every=1000)
    result = meta_train(model, task, config, tmp_path / "dp.pt", torch.device("cpu"), seed=0, progress=False)
    losses = [row["loss"] for row in result.curve]
    assert sum(losses[-10:]) / 10 < 0.95 * sum(losses[:10]) / 10
    assert (tmp_path / "dp.pt").exists()


def test_presets_symmetric_trace_holds_128_units_in_table1_budget_and_its_triangle_loses_nothing():
    task = BinaryTask(16)
    model = DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET)
    assert model.cfg.plastic_size == 128  # 128 * 129 / 2 = 8256: a Hopfield network's budget, exactly
    assert check_declared(model, task.spec, TABLE1_BUDGET, "differentiable_plasticity") == 8256
    with pytest.raises(OverBudgetError):
        check_declared(DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, plastic_size=129,
                                                          hebbian_init=False), task.spec, TABLE1_BUDGET, "dp")
    episodes = task.sample(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.alpha.mul_(100)  # a trace that moves the read
        packed = model.write(episodes.patterns)
        full = packed[:, model.unpack]
        # the same weights reading the whole k x k matrix, as the square trace's model does
        square = DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, symmetric_trace=False, plastic_size=128)
        square.load_state_dict(model.state_dict())
        from_packed, from_full = model.read(packed, episodes.queries), square.read(full, episodes.queries)
    assert packed.shape == (2, 8256)
    torch.testing.assert_close(from_packed, from_full, rtol=0, atol=0)
    assert not torch.allclose(from_packed, model.read(torch.zeros_like(packed), episodes.queries), atol=1e-4)


def test_hebbian_init_starts_as_a_hebbian_memory_and_needs_a_unit_per_entry():
    """Untrained, hebbian_init recalls 16 written patterns from half their bits (a few bits wrong of 128, where
    the default start is at chance); it needs one plastic unit per pattern entry."""
    task = BinaryTask(16)
    episodes = task.sample(32, torch.Generator().manual_seed(1))
    errors = {}
    for hebbian in (True, False):
        torch.manual_seed(0)
        model = DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, hebbian_init=hebbian)
        with torch.no_grad():
            errors[hebbian] = task.errors(model.read(model.write(episodes.patterns), episodes.queries),
                                          episodes.patterns).mean().item()
    assert errors[True] < 3 and errors[False] > 25, errors
    with pytest.raises(MembenchError, match="hebbian_init needs .* plastic_size equal to the pattern size"):
        DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, plastic_size=64)
    with pytest.raises(OverBudgetError, match="needs 128 plastic units, a trace of 16384 floats"):
        DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, symmetric_trace=False)  # room for 90


def test_the_hebbian_start_is_part_of_the_checkpoint_key(monkeypatch):
    """A checkpoint trained from one Hebbian start is not taken for another's: the start's values change the key
    (a model without hebbian_init keeps its key whatever they are)."""
    from baselines import plasticity
    from membench.build import build_model
    from membench.run_identity import checkpoint_key
    from membench.run_spec import RunSpec

    task = BinaryTask(16)

    def key(options: dict) -> str:
        spec = RunSpec("table1-learned", "differentiable_plasticity", task.config(), TABLE1_BUDGET, 0, 16, "quick",
                       options)
        return checkpoint_key(spec, build_model(spec, task), task)

    before = key({}), key({"hebbian_init": False})  # the presets start Hebbian
    monkeypatch.setitem(plasticity.HEBBIAN_START, "c", 1.0)
    after = key({}), key({"hebbian_init": False})
    assert before[0] != after[0] and before[1] == after[1]


def test_a_hebbian_start_keeps_one_unit_per_entry_at_a_larger_budget_and_is_over_a_smaller_one():
    spec = BinaryTask(16).spec
    model = DifferentiablePlasticity.from_spec(spec, 4 * TABLE1_BUDGET)
    assert model.cfg.plastic_size == 128 and model.memory_floats(spec) == 8256  # within the budget, not filling it
    with pytest.raises(OverBudgetError, match="give --option hebbian_init=false"):  # as a suite leaves out
        DifferentiablePlasticity.from_spec(spec, TABLE1_BUDGET - 1)
    assert DifferentiablePlasticity.from_spec(spec, TABLE1_BUDGET - 1, hebbian_init=False).cfg.plastic_size == 127
    from membench.suites import SUITES  # the budget sweep leaves out the budgets below 128 units and keeps the rest
    budgets = {spec.budget for spec in SUITES["capacity-budget"].expand("capacity-budget",
                                                                          ("differentiable_plasticity",), (0,), 64,
                                                                          "quick")}
    assert min(budgets) == TABLE1_BUDGET and len(budgets) == 3
