"""LSTM baseline: its state is the memory, it sees the write order, and meta-training learns."""
from __future__ import annotations

import pytest
import torch

from baselines.lstm import LSTMConfig, LSTMMemory
from membench.budget import TABLE1_BUDGET, check_declared
from membench.errors import OverBudgetError
from membench.tasks import BinaryTask
from membench.training import TrainConfig, meta_train


def test_paper_preset_state_is_the_whole_budget():
    spec = BinaryTask(96).spec
    model = LSTMMemory.from_spec(spec, TABLE1_BUDGET, preset="paper")
    assert model.hidden_size == 4128
    assert check_declared(model, spec, TABLE1_BUDGET, "lstm") == TABLE1_BUDGET


def test_quick_preset_is_under_budget_and_state_matches_count():
    task = BinaryTask(16)
    model = LSTMMemory.from_spec(task.spec, TABLE1_BUDGET, preset="quick")
    count = check_declared(model, task.spec, TABLE1_BUDGET, "lstm")
    h, c = model.write(task.sample(2, torch.Generator().manual_seed(0)).patterns)
    assert h.shape == c.shape == (2, model.hidden_size)
    assert count == 2 * model.hidden_size == (h.numel() + c.numel()) // 2 <= TABLE1_BUDGET


def test_oversized_configuration_is_refused():
    spec = BinaryTask(16).spec
    model = LSTMMemory(spec, TABLE1_BUDGET, LSTMConfig(hidden_size=TABLE1_BUDGET // 2 + 1))
    with pytest.raises(OverBudgetError):
        check_declared(model, spec, TABLE1_BUDGET, "lstm")


def test_retrievals_depend_on_write_order():
    torch.manual_seed(0)
    task = BinaryTask(8)
    model = LSTMMemory(task.spec, TABLE1_BUDGET, LSTMConfig(hidden_size=32))
    episodes = task.sample(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        forward = model.read(model.write(episodes.patterns), episodes.queries)
        backward = model.read(model.write(episodes.patterns.flip(1)), episodes.queries)
    assert forward.shape == episodes.queries.shape and 0 <= forward.min() and forward.max() <= 1
    assert (forward - backward).abs().max() > 1e-4


def test_meta_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    task = BinaryTask(4)
    model = LSTMMemory(task.spec, TABLE1_BUDGET, LSTMConfig(hidden_size=128))
    config = TrainConfig(steps=200, batch_size=8, lr=3e-3, clip_norm=1.0, log_every=10, checkpoint_every=200)
    result = meta_train(model, task, config, tmp_path / "lstm.pt", torch.device("cpu"), seed=0, progress=False)
    first, last = result.curve[0], result.curve[-1]
    assert last["loss"] < 0.9 * first["loss"], result.curve
    assert last["error"] < first["error"], result.curve


def test_long_preset_is_the_quick_model_at_ebmm_gpus_training_compute():
    """'long' gives the LSTM EBMM gpu's updates and episodes on a CPU: the quick preset's architecture (the
    gpu preset's hidden 4128 needs a GPU), trained as long as the other baselines' gpu presets."""
    from ebmm.memory import EBMM

    spec = BinaryTask(16).spec
    quick, long = (LSTMMemory.presets(spec)[name] for name in ("quick", "long"))
    ebmm_gpu = EBMM.presets(spec, {})["gpu"].train
    assert long.model == quick.model and long.model.hidden_size == 256
    assert long.train.steps >= ebmm_gpu.steps
    assert long.train.steps * long.train.batch_size >= ebmm_gpu.steps * ebmm_gpu.batch_size
    assert long.train.num_patterns == ebmm_gpu.num_patterns
