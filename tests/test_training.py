"""The shared training loop across bounded commands: the time limit pauses, the rerun resumes."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from membench.cli import main
from membench.errors import EXIT_PAUSED, MembenchError
from membench.interface import AssociativeMemory, Preset
from membench.report import summarise
from membench.build import build_model
from membench.suites import get_suite
from membench.tasks import BinaryTask
from membench.stepper import Stepper
from membench.episode_stream import EpisodeStream
from membench.training import TrainConfig, learning_rate, meta_train
from tests.conftest import exited_cleanly, records_in

TINY_MODEL = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from dataclasses import dataclass
    from membench import AssociativeMemory, TaskSpec
    from membench.interface import Preset, TrainConfig


    @dataclass(frozen=True)
    class TinyConfig:
        sharpness: float = 4.0


    class TinyLearned(AssociativeMemory):
        """Keeps the patterns' mean bit frequency (D floats) and fills erased bits from it, via a learned bias."""

        trainable = True

        def __init__(self, spec: TaskSpec, config: TinyConfig):
            super().__init__()
            self.spec, self.cfg = spec, config
            self.bias = torch.nn.Parameter(torch.zeros(spec.pattern_size))

        @classmethod
        def presets(cls, spec, options):
            return {"quick": Preset(TinyConfig(), TrainConfig(steps=6, batch_size=2, lr=1e-2, log_every=1,
                                                              checkpoint_every=100))}

        @classmethod
        def from_preset(cls, spec, budget, preset):
            return cls(spec, preset.model)

        def memory_floats(self, spec):
            return spec.pattern_size

        def write(self, patterns):
            return patterns.mean(1)

        def _logits(self, state, queries):
            return (self.cfg.sharpness * (2 * state.unsqueeze(1) - 1) + self.bias).expand_as(queries)

        def read(self, state, queries):
            known = queries != self.spec.fill_value
            return torch.where(known, queries, torch.sigmoid(self._logits(state, queries)))

        def meta_loss(self, patterns, queries):
            logits = self._logits(self.write(patterns), queries)
            return F.binary_cross_entropy_with_logits(logits, patterns), torch.sigmoid(logits).detach()
''')


def _tiny_run(tmp_path: Path, monkeypatch) -> list[str]:
    """`membench run` arguments for TINY_MODEL (written into tmp_path, the working directory from here on):
    N = 16, 32 queries, records in out/; the caller adds where checkpoints go."""
    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "tiny_learned", raising=False)  # this folder's, not an earlier test's
    return ["run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16", "--queries", "32", "--out", "out",
            "--no-progress"]


def _linear_model(seed: int = 0) -> torch.nn.Module:
    """A small EBMM; another seed moves its initial weights (small_model always starts from seed 0)."""
    from tests.test_ebmm import small_model

    model = small_model()[0]
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("cosine_decay, ahead, warmup", [(False, False, 0), (True, False, 0), (True, True, 0),
                                                          (True, False, 3)])
def test_time_limit_pauses_and_the_next_call_matches_straight_training(tmp_path: Path, cosine_decay: bool, ahead: bool,
                                                                       warmup: int, monkeypatch):
    """Also with the next batch drawn while an update runs (as on CUDA): the checkpoint's generator state is
    the one before the batch in flight; and paused inside a warmup, which the resumed call continues."""
    monkeypatch.setattr("membench.training.DRAW_AHEAD_ON", ("cpu", "cuda") if ahead else ("cuda",))
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, clip_norm=1.0, log_every=1, checkpoint_every=100,
                         num_patterns=(4, 8), cosine_decay=cosine_decay, warmup_steps=warmup)
    task, device = BinaryTask(4), torch.device("cpu")
    straight = _linear_model()
    meta_train(straight, task, config, tmp_path / "straight.pt", device, seed=0, progress=False)
    paused = _linear_model()
    first = meta_train(paused, task, config, tmp_path / "paused.pt", device, seed=0, progress=False, time_limit_s=0.0)
    assert not first.finished and first.steps == 1          # stopped after one step, checkpointed
    resumed = _linear_model()                               # a new process
    second = meta_train(resumed, task, config, tmp_path / "paused.pt", device, seed=0, progress=False)
    assert second.finished and second.steps == 4 and [r["step"] for r in second.curve] == [1, 2, 3, 4]
    assert [h["optimizer"] for h in second.history] == ["fresh", "resumed"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"paused-and-resumed training differs in {name}"


def test_a_model_drawing_from_the_global_generators_resumes_as_it_would_have_gone_on(tmp_path: Path):
    """A meta_loss drawing from torch's, NumPy's and Python's generators (dropout, say): paused and resumed in a
    new process (which seeds them as the runner does), its weights equal straight training's, bit for bit
    (the global states were not saved: the resumed run drew step 1's numbers again)."""
    import random

    import numpy as np

    from membench.tasks import seed_all

    def noisy() -> torch.nn.Module:
        model = _linear_model()
        inner = model.meta_loss

        def meta_loss(patterns, queries):
            loss, out = inner(patterns, queries)
            scale = 1 + torch.rand(()) + float(np.random.rand()) + random.random()
            return loss * scale, out
        model.meta_loss = meta_loss
        return model

    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, clip_norm=0.05, log_every=1, checkpoint_every=100)
    task, device = BinaryTask(4), torch.device("cpu")
    seed_all(0)
    straight = noisy()
    meta_train(straight, task, config, tmp_path / "straight.pt", device, seed=0, progress=False)
    seed_all(0)
    paused = noisy()
    assert meta_train(paused, task, config, tmp_path / "paused.pt", device, seed=0, progress=False,
                      time_limit_s=0.0).steps == 1
    seed_all(0)                                              # a new process, seeded as the runner seeds it
    resumed = noisy()
    meta_train(resumed, task, config, tmp_path / "paused.pt", device, seed=0, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"paused-and-resumed training differs in {name}"


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    config = TrainConfig(steps=8, lr=0.8, warmup_steps=4)
    assert [learning_rate(config, step) for step in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    both = dataclasses.replace(config, cosine_decay=True)
    cosine = [0.5 * (1 + math.cos(math.pi * step / 8)) for step in range(8)]
    assert [learning_rate(both, step) for step in range(8)] == pytest.approx(
        [0.8 * min(1, (step + 1) / 4) * cosine[step] for step in range(8)])
    assert learning_rate(TrainConfig(steps=8, lr=0.8), 5) == 0.8  # neither: the constant rate
    with pytest.raises(MembenchError, match="train.warmup_steps=-1 must be a non-negative integer"):
        TrainConfig(warmup_steps=-1)


def test_the_first_update_of_a_warmup_is_an_update_at_lr_over_warmup_steps(tmp_path: Path):
    """The optimiser really takes the warmed-up rate: one update with warmup_steps = 4 equals one at lr / 4."""
    task, device = BinaryTask(4), torch.device("cpu")
    common = dict(steps=1, batch_size=2, clip_norm=1.0, log_every=1, checkpoint_every=100, num_patterns=(4,))
    trained = {}
    for name, config in (("warmup", TrainConfig(lr=1e-2, warmup_steps=4, **common)),
                         ("quarter", TrainConfig(lr=1e-2 / 4, **common)),
                         ("full", TrainConfig(lr=1e-2, **common))):
        trained[name] = _linear_model()
        meta_train(trained[name], task, config, tmp_path / f"{name}.pt", device, seed=0, progress=False)
    for (name, warm), quarter, full in zip(trained["warmup"].state_dict().items(),
                                           trained["quarter"].state_dict().values(),
                                           trained["full"].state_dict().values()):
        torch.testing.assert_close(warm, quarter, msg=f"the warmup's first update differs from lr / 4 in {name}")
    assert any(not torch.equal(a, b) for a, b in zip(trained["warmup"].state_dict().values(),
                                                     trained["full"].state_dict().values()))


def test_cli_pauses_with_exit_3_and_resumes_without_duplicates(tmp_path: Path, monkeypatch):
    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16,32", "--queries", "32",
            "--out", "out", "--checkpoint-dir", "ck", "--no-progress"]
    paused = runner.invoke(main, [*args, "--train-time-limit", "0"])
    assert paused.exit_code == EXIT_PAUSED, paused.output
    assert "step 1 of 6" in paused.output and "Rerun the same command" in paused.output
    assert "Paused: meta-training of" in paused.output and "Error" not in paused.output  # a pause is no failure
    assert not list(tmp_path.glob("out/runs/*.json"))  # a paused run leaves no record
    curves = list(tmp_path.glob("out/training/*.csv"))  # but its curve so far, so a session carries it home
    assert len(curves) == 1 and list(pd.read_csv(curves[0])["step"]) == [1]
    done = runner.invoke(main, args)
    assert done.exit_code == 0, done.output
    records = records_in(tmp_path / "out")
    assert sorted(r["task"]["num_patterns"] for r in records) == [16, 32]
    assert all(r["training"]["steps"] == 6 for r in records)


def test_no_train_evaluates_a_paused_checkpoint_as_it_stands_and_a_later_run_trains_it_on(tmp_path: Path,
                                                                                           monkeypatch):
    """--no-train makes no update: a paused checkpoint is evaluated at its step, its record and table say so,
    and the checkpoint is left as it was; the same command again skips the run; the command without
    --no-train trains the checkpoint on and replaces the record, which a report then prefers."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, [*args, "--train-time-limit", "0"]).exit_code == EXIT_PAUSED
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    before = checkpoint.read_bytes()
    evaluated = CliRunner().invoke(main, [*args, "--no-train"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "1 of 6 × 2" in evaluated.output and "1 run(s) from a paused one" in evaluated.output
    assert checkpoint.read_bytes() == before  # no step, no rewrite
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    paused = json.loads(path.read_text())
    assert paused["training"]["finished"] is False and paused["training"]["steps"] == 1
    assert paused["training"]["trained_by_this_run"] == {"steps": 0, "train_time_s": 0.0}
    again = CliRunner().invoke(main, [*args, "--no-train"])
    assert again.exit_code == 0 and "0 run(s) executed, 1 already finished" in again.output, again.output
    trained = CliRunner().invoke(main, args)
    assert trained.exit_code == 0 and "paused at step 1 of 6; training it on" in trained.output, trained.output
    done = json.loads(path.read_text())
    assert done["training"]["finished"] is True and done["training"]["steps"] == 6
    assert "| 6 × 2 " in trained.output and "of 6 ×" not in trained.output
    from membench.cells import distinct

    later = {**paused, "finished_at": "9999-12-31T00:00:00Z"}  # made after the finished one, still second to it
    assert distinct([later, done])[0] == [done] and distinct([done, later])[0] == [done]


def test_no_train_evaluates_again_once_the_paused_checkpoint_was_trained_further(tmp_path: Path, monkeypatch):
    """A GPU session trains the shipped checkpoint on (here: its step moved on by hand), without finishing it: the
    next --no-train evaluates it again, still as paused."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, [*args, "--train-time-limit", "0"]).exit_code == EXIT_PAUSED
    assert CliRunner().invoke(main, [*args, "--no-train"]).exit_code == 0
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    torch.save({**torch.load(checkpoint, weights_only=False), "step": 3}, checkpoint)
    again = CliRunner().invoke(main, [*args, "--no-train"])
    assert again.exit_code == 0 and "now at step 3 (trained on or again since); evaluating it again" in again.output, again.output
    (record,) = records_in(tmp_path / "out")
    assert record["training"]["steps"] == 3 and record["training"]["finished"] is False
    saved = torch.load(checkpoint, weights_only=False)  # trained again from scratch, to the same step
    torch.save({**saved, "model": {**saved["model"], "bias": saved["model"]["bias"] + 1.0}}, checkpoint)
    changed = CliRunner().invoke(main, [*args, "--no-train"])
    assert changed.exit_code == 0 and "whose weights have changed since" in changed.output, changed.output
    assert records_in(tmp_path / "out")[0]["training"]["weights_digest"] != record["training"]["weights_digest"]
    unchanged = CliRunner().invoke(main, [*args, "--no-train"])
    assert unchanged.exit_code == 0 and "0 run(s) executed, 1 already finished" in unchanged.output
    torch.save({**torch.load(checkpoint, weights_only=False), "step": 2}, checkpoint)  # retrained, fewer steps
    fewer = CliRunner().invoke(main, [*args, "--no-train"])
    assert fewer.exit_code == 0 and "now at step 2 (trained on or again since); evaluating it again" in fewer.output, fewer.output
    capacity = CliRunner().invoke(main, ["capacity", "--out", "out"])  # its tables say so too
    assert capacity.exit_code == 0, capacity.output
    assert ("Evaluated from a paused checkpoint (`--no-train`; updates done of planned × episodes): "
            "tiny_learned:TinyLearned (2 of 6 × 2).") in (tmp_path / "out" / "capacity.md").read_text()


def test_checkpoints_lists_where_each_cached_and_shipped_checkpoint_stands(tmp_path: Path, monkeypatch):
    """A paused checkpoint at its step of planned; one whose config names no steps at 'of ?'; an unreadable file, a
    dangling link and a .pt that is not a checkpoint, each with why; a missing cache folder said; the shipped
    folder (an empty one, here, until the test adds to it) listed once when it is also the cache."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    empty = CliRunner().invoke(main, ["checkpoints", "--checkpoint-dir", "ck"])
    assert empty.exit_code == 0 and "no cache folder ck" in empty.output
    assert "no checkpoints, cached or shipped" in empty.output
    assert CliRunner().invoke(main, [*args, "--train-time-limit", "0"]).exit_code == EXIT_PAUSED
    (paused,) = (tmp_path / "ck").glob("*.pt")
    saved = torch.load(paused, weights_only=False)
    torch.save({**saved, "config": None}, tmp_path / "ck" / "unplanned-quick-0.pt")
    (tmp_path / "ck" / "dangling-quick-0.pt").symlink_to(tmp_path / "nowhere.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "ck" / "other-quick-0.pt")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "broken-quick-0.pt").write_bytes(b"garbage")
    listed = CliRunner().invoke(main, ["checkpoints", "--checkpoint-dir", "ck"])
    assert listed.exit_code == 0 and exited_cleanly(listed), listed.output
    rows = {tuple(cells[:2]): cells[2:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in listed.output.splitlines()[2:])}
    assert rows[("cache", paused.stem)][1] == "1 of 6" and rows[("cache", paused.stem)][3] == "True", rows
    assert rows[("cache", paused.stem)][2] not in ("", "unknown")  # this processor, from the checkpoint's history
    assert rows[("cache", "unplanned-quick-0")][1] == "1 of ?"
    assert rows[("cache", "dangling-quick-0")][1].startswith("unreadable (FileNotFoundError")
    assert rows[("cache", "other-quick-0")][1] == "unreadable (ValueError: not a membench training checkpoint)"
    assert rows[("shipped", "broken-quick-0")][1].startswith("unreadable"), rows
    both = CliRunner().invoke(main, ["checkpoints", "--checkpoint-dir", str(tmp_path / "shipped")])
    assert both.output.count("broken-quick-0") == 1, both.output


def test_no_train_checks_the_checkpoints_of_stale_records_before_any_run(tmp_path: Path, monkeypatch):
    """A record made with an older preset is run again: with --no-train its checkpoint must be there before
    Hebb's run beside it is made."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    record["preset_config"]["train"]["steps"] = 7  # an older definition of the preset
    path.write_text(json.dumps(record))
    for checkpoint in (tmp_path / "ck").glob("*.pt"):
        checkpoint.unlink()
    refused = CliRunner().invoke(main, [*args, "--model", "hopfield_hebb", "--no-train"])
    assert refused.exit_code == 1 and "its checkpoint is neither in ck" in refused.output, refused.output
    assert [p.name for p in (tmp_path / "out" / "runs").glob("*.json")] == [path.name]  # no Hebb record


def test_no_train_refuses_before_any_run_naming_every_missing_or_unreadable_checkpoint(tmp_path: Path, monkeypatch):
    """Only N = 16 has a checkpoint: the command (Hebb beside the learned model) is refused before any run, in
    one line naming N = 32; an unreadable checkpoint is named as such, left where it is, in one line."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, [*args, "--train-time-limit", "0"]).exit_code == EXIT_PAUSED  # N = 16's
    both_n = [*args[:args.index("16")], "16,32", *args[args.index("16") + 1:], "--model", "hopfield_hebb"]
    missing = CliRunner().invoke(main, [*both_n, "--no-train"])
    assert missing.exit_code == 1 and exited_cleanly(missing), missing.output
    assert "--no-train: 'tiny_learned:TinyLearned' (preset quick, seed 0): its checkpoint is neither in ck nor " \
           f"shipped in {tmp_path / 'shipped'}" in missing.output and ", at N=32; no run was started: run without --no-train" in missing.output
    assert len(missing.output.strip().splitlines()) == 1 and not (tmp_path / "out" / "runs").exists()
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    checkpoint.write_bytes(b"garbage")
    unreadable = CliRunner().invoke(main, [*args, "--no-train"])
    assert unreadable.exit_code == 1 and len(unreadable.output.strip().splitlines()) == 1, unreadable.output
    assert f"its checkpoint {Path('ck') / checkpoint.name} is unreadable (UnpicklingError: " in unreadable.output
    assert "; left as it is), at N=16" in unreadable.output
    assert checkpoint.read_bytes() == b"garbage" and not (tmp_path / "out" / "runs").exists()
    both = CliRunner().invoke(main, [*args, "--no-train", "--train-time-limit", "10"])
    assert both.exit_code == 1 and "contradict each other" in both.output and exited_cleanly(both), both.output


def test_a_paused_record_whose_checkpoint_finished_elsewhere_is_evaluated_again_not_trained(tmp_path: Path,
                                                                                           monkeypatch):
    """Its warning says the checkpoint finished (not 'training it on'), and nothing is trained."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, [*args, "--train-time-limit", "0"]).exit_code == EXIT_PAUSED
    assert CliRunner().invoke(main, [*args, "--no-train"]).exit_code == 0
    elsewhere = [*args[:args.index("--out")], "--out", "elsewhere", *args[args.index("--out") + 2:]]
    assert CliRunner().invoke(main, elsewhere).exit_code == 0  # the same checkpoint, trained to its end
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "which has finished training since; evaluating it again" in result.output
    assert "training it on" not in result.output and "no meta-training in this call" in result.output


def test_unknown_preset_names_the_models_presets():
    spec = get_suite("table1-learned").expand("table1-learned", ("memory_networks",), (0,), 64, "huge", (16,))[0]
    with pytest.raises(MembenchError, match="model 'memory_networks' has no preset 'huge'. Its presets: quick, gpu, paper"):
        build_model(spec, BinaryTask(16))


def test_an_int_given_for_a_float_option_is_a_float():
    """`--option write_lr_init=2` (a float field) configures 2.0, as `=2.0` does; an int field keeps its int."""
    from ebmm.memory import EBMM
    from membench.interface import resolve_preset

    spec = BinaryTask(16).spec
    given = resolve_preset(EBMM, spec, "quick", {"write_lr_init": 2, "train.steps": 3})
    assert type(given.model.write_lr_init) is float and given == resolve_preset(
        EBMM, spec, "quick", {"write_lr_init": 2.0, "train.steps": 3})
    assert type(given.train.steps) is int


def test_report_keeps_one_row_per_preset():
    def record(preset: str, error: float) -> dict:
        return {"run_id": preset, "model": "ebmm", "preset": preset, "task": {"num_patterns": 16}, "errors": [error] * 32,
                "options": {}, "seed": 0, "memory_floats": 8256, "budget": 8256, "training": {"checkpoint_key": preset,
                "train_time_s": 1.0}, "environment": {"device": "cpu", "torch": "2"}, "command": "membench run", "wall_time_s": 1.0}
    summary = summarise([record("quick", 1.0), record("gpu", 2.0)])
    assert len(summary) == 2 and sorted(summary["mean"]) == [1.0, 2.0]


def test_shipped_checkpoint_evaluates_without_training(tmp_path: Path, monkeypatch):
    """`membench ship` copies a trained run's checkpoint into the repository's folder; a fresh cache then
    evaluates the run from it (same numbers, no training step). conftest points the shipped folder at
    tmp_path / "shipped"."""
    args = _tiny_run(tmp_path, monkeypatch)
    assert CliRunner().invoke(main, [*args, "--checkpoint-dir", "cache1"]).exit_code == 0
    shipped = CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "cache1"])
    assert shipped.exit_code == 0 and len(list((tmp_path / "shipped").glob("*.pt"))) == 1, shipped.output
    again = CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "cache1"])
    assert again.exit_code == 0 and again.output.startswith("nothing shipped: "), again.output
    assert not any(line.startswith("shipped ") for line in again.output.splitlines())
    (first,) = records_in(tmp_path / "out")
    calls = []
    monkeypatch.setattr(Stepper, "step", lambda *args: calls.append(1))
    assert CliRunner().invoke(main, [*args, "--checkpoint-dir", "cache2", "--force"]).exit_code == 0
    (second,) = records_in(tmp_path / "out")
    assert calls == [] and second["errors"] == first["errors"]
    assert second["training"]["checkpoint_key"] == first["training"]["checkpoint_key"]
    (path,) = (tmp_path / "shipped").glob("*.pt")
    saved = torch.load(path, weights_only=False)
    assert "optimizer" not in saved and all(t.dtype == torch.float32 for t in saved["model"].values())
    (stretch,) = first["training"]["history"]  # which device trained it, how many steps, at what precision
    assert stretch["steps"] == [0, 6] and stretch["device"] == "cpu" and stretch["matmul_precision"] == "highest"
    assert stretch["peak_memory_gb"] is None  # CUDA's allocator only
    assert second["training"]["history"] == first["training"]["history"] == saved["history"]
    retrained = torch.load(tmp_path / "cache2" / path.name, weights_only=False)  # trained again, other weights
    torch.save({**retrained, "model": {k: v + 1.0 for k, v in retrained["model"].items()}}, tmp_path / "cache2" / path.name)
    assert CliRunner().invoke(main, [*args, "--checkpoint-dir", "cache2", "--force", "--no-train"]).exit_code == 0
    refused = CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "cache2"])
    assert refused.exit_code == 1 and exited_cleanly(refused), refused.output
    assert "trained as far, with other weights" in refused.output  # the shipped ones stay
    assert "1 record(s) of out were evaluated with other weights than the shipped checkpoint of their key" in refused.output
    assert torch.equal(torch.load(path, weights_only=False)["model"]["bias"], saved["model"]["bias"])



def test_a_model_of_yours_may_name_its_own_presets(tmp_path: Path, monkeypatch):
    (tmp_path / "own_presets.py").write_text(TINY_MODEL + textwrap.dedent("""

        class OwnPresets(TinyLearned):
            @classmethod
            def presets(cls, spec, options):
                return {"tiny": super().presets(spec, options)["quick"]}
    """))
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", "own_presets:OwnPresets", "--num-patterns", "16", "--queries", "32", "--out", "out",
            "--no-progress", "--preset"]
    ran = CliRunner().invoke(main, [*args, "tiny"])
    assert ran.exit_code == 0 and "1 run(s) executed" in ran.output, ran.output
    (record,) = records_in(tmp_path / "out")
    assert record["preset"] == "tiny" and record["training"]["steps"] == 6  # trained under its own preset
    refused = CliRunner().invoke(main, [*args, "quick"])
    assert refused.exit_code == 1 and "has no preset 'quick'. Its presets: tiny" in refused.output
    assert len(records_in(tmp_path / "out")) == 1

def test_a_model_of_yours_whose_code_changed_is_run_and_trained_again(tmp_path: Path, monkeypatch):
    """Its record and checkpoint key carry a digest of its source file: an edit makes the next run redo it (and
    train a new checkpoint) instead of showing the old numbers; an unchanged model is skipped."""
    source = tmp_path / "edited_model.py"
    source.write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", "edited_model:TinyLearned", "--num-patterns", "16", "--queries", "32", "--out", "out",
            "--no-progress", "--checkpoint-dir", "ck"]
    outputs = [CliRunner().invoke(main, args)]
    outputs.append(CliRunner().invoke(main, args))
    source.write_text(TINY_MODEL + "\n# an edit\n")
    outputs.append(CliRunner().invoke(main, args))
    assert [o.exit_code for o in outputs] == [0, 0, 0], [o.output for o in outputs]
    assert ["1 run(s) executed" in o.output for o in outputs] == [True, False, True]
    assert "edited_model:TinyLearned (" in outputs[2].output and "changed since its record was made" in outputs[2].output
    assert len(list((tmp_path / "ck").glob("*.pt"))) == 2  # trained again under a new key
    source.write_text(TINY_MODEL + "\n# another edit\n")  # seed 1 with the new code; seed 0's record is older
    other_seed = CliRunner().invoke(main, [*args, "--seeds", "1"])
    assert other_seed.exit_code == 0 and "1 run(s) executed" in other_seed.output, other_seed.output
    assert "1 record(s) of edited_model:TinyLearned were made by an older version" in other_seed.output
    assert "seeds: 1;" in other_seed.output  # the two versions never pool in one cell


def test_a_report_leaves_out_every_n_an_older_version_of_a_model_made(tmp_path: Path, monkeypatch):
    """Edited and rerun at N = 16 only, a model's N = 32 record (older source) is left out of the report with a
    warning, not shown in the new version's row."""
    source = tmp_path / "slots_model.py"
    source.write_text("from baselines.raw_slots import RawSlotMemory\n\nclass Slots(RawSlotMemory):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", "slots_model:Slots", "--queries", "32", "--out", "out", "--no-progress", "--num-patterns"]
    assert CliRunner().invoke(main, [*args, "16,32"]).exit_code == 0
    source.write_text(source.read_text() + "\n# an edit\n")
    assert CliRunner().invoke(main, [*args, "16"]).exit_code == 0
    report = CliRunner().invoke(main, ["report", "--out", "out"])
    assert report.exit_code == 0, report.output
    assert "1 record(s) of slots_model:Slots were made by an older version" in report.output
    from membench.store import ResultsStore

    (older,) = [r for r in ResultsStore(tmp_path / "out").records() if r["task"]["num_patterns"] == 32]
    assert f"rerun their commands to include them: `{older['command']}`" in report.output  # which to rerun
    table = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert sorted(table["num_patterns"]) == [16], table


def test_weights_only_checkpoint_resumes_with_a_fresh_optimiser(tmp_path: Path, capsys):
    """Longer training continues from a shipped (weights-only) checkpoint: from its weights, step and episode
    stream, with a fresh AdamW state; the history gains a second stretch."""
    from membench.checkpoints import save_checkpoint, weights_only

    task, device = BinaryTask(4), torch.device("cpu")
    short = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=100)
    meta_train(_linear_model(), task, short, tmp_path / "ck.pt", device, seed=0, progress=False)
    saved = weights_only(torch.load(tmp_path / "ck.pt", weights_only=False))
    save_checkpoint(saved, tmp_path / "ck.pt")
    longer = dataclasses.replace(short, steps=5)
    resumed = _linear_model(seed=1)  # other initial weights: the checkpoint's must be loaded
    result = meta_train(resumed, task, longer, tmp_path / "ck.pt", device, seed=0, progress=False)
    assert "holds weights only" in capsys.readouterr().err
    assert result.finished and [r["step"] for r in result.curve] == [1, 2, 3, 4, 5]
    assert [h["steps"] for h in result.history] == [[0, 3], [3, 5]]
    assert [h["optimizer"] for h in result.history] == ["fresh", "fresh"]  # the second stretch's AdamW restarted
    by_hand = _linear_model(seed=1)  # the two steps taken by hand: saved weights and episodes, a new AdamW
    by_hand.load_state_dict(saved["model"])
    stepper, generator = Stepper(by_hand, longer, device), torch.Generator()
    generator.set_state(saved["generator"])
    for _ in range(2):
        episodes = task.sample(longer.batch_size, generator, split="train")
        stepper.step(episodes.patterns, episodes.queries)
    for (name, a), b in zip(by_hand.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"training resumed from weights only differs in {name}")


def test_a_checkpoint_whose_optimiser_state_does_not_fit_its_parameters_is_set_aside(tmp_path: Path, capsys):
    """AdamW's load_state_dict takes moments of another shape without a word, and the update then fails deep in
    AdamW: such a checkpoint is set aside at load, named, and training starts afresh."""
    from membench.checkpoints import save_checkpoint

    task, device = BinaryTask(4), torch.device("cpu")
    short = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=100)
    for shape, cut in (("(1,)", lambda t: t.flatten()[:1]), ("()", lambda t: t.flatten()[0])):
        path = tmp_path / f"ck{len(shape)}.pt"
        meta_train(_linear_model(), task, dataclasses.replace(short, steps=2), path, device, seed=0, progress=False)
        saved = torch.load(path, weights_only=False)
        moments = saved["optimizer"]["state"][0]
        moments["exp_avg"] = cut(moments["exp_avg"]).clone()
        save_checkpoint(saved, path)
        result = meta_train(_linear_model(), task, short, path, device, seed=0, progress=False)
        err = capsys.readouterr().err
        assert f"optimiser state exp_avg of shape {shape} saved for a parameter of shape" in err, err
        assert f"{path.name}.corrupt" in err
        assert result.finished and [r["step"] for r in result.curve] == [1, 2, 3]  # afresh


def test_ship_rewrites_an_old_shipped_checkpoint_without_its_optimiser(tmp_path: Path, monkeypatch):
    """A checkpoint shipped before `ship` stripped optimiser states (and before histories were kept) is
    rewritten weights only, its history taken from the record that trained it; the weights are unchanged."""
    from membench.shipping import ship_checkpoints

    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "cache"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (record,) = records_in(tmp_path / "out")
    (cached,) = (tmp_path / "cache").glob("*.pt")
    old = torch.load(cached, weights_only=False)
    del old["history"]
    (tmp_path / "shipped").mkdir()
    torch.save(old, tmp_path / "shipped" / cached.name)  # as an earlier `membench ship` copied it
    assert ship_checkpoints(tmp_path / "out", tmp_path / "empty-cache") == [tmp_path / "shipped" / cached.name]
    new = torch.load(tmp_path / "shipped" / cached.name, weights_only=False)
    assert "optimizer" not in new and new["step"] == old["step"] and new["curve"] == old["curve"]
    for name, tensor in old["model"].items():
        assert torch.equal(new["model"][name], tensor), name
    (stretch,) = new["history"]
    assert stretch["steps"] == [0, 6] and stretch["from_record"] == record["run_id"]
    assert stretch["device_name"] == record["environment"]["device_name"]
    assert ship_checkpoints(tmp_path / "out", tmp_path / "empty-cache") == []  # already weights only: left alone


def test_paused_training_shipped_from_one_machine_resumes_on_the_next(tmp_path: Path, monkeypatch):
    """A bounded command pauses on machine 1; its checkpoint, shipped with --checkpoint (weights and, while
    unfinished, AdamW's state), is what machine 2 (an empty cache) resumes from, to the numbers of straight
    training; shipping again replaces it by the finished one (weights only), and not the reverse."""
    args = _tiny_run(tmp_path, monkeypatch)
    paused = CliRunner().invoke(main, [*args, "--checkpoint-dir", "machine1", "--train-time-limit", "0"])
    assert paused.exit_code == EXIT_PAUSED, paused.output
    (carried,) = (tmp_path / "machine1").glob("*.pt")
    first = CliRunner().invoke(main, ["ship", "--checkpoint", str(carried)])  # a key not shipped before
    assert first.exit_code == 0 and "unreadable" not in first.output, first.output
    shipped = tmp_path / "shipped" / carried.name
    assert torch.load(shipped, weights_only=False)["step"] == 1
    resumed = CliRunner().invoke(main, [*args, "--checkpoint-dir", "machine2"])
    assert resumed.exit_code == 0 and "holds weights only" not in resumed.output, resumed.output
    (record,) = records_in(tmp_path / "out")
    assert [h["steps"] for h in record["training"]["history"]] == [[0, 1], [1, 6]]
    straight = CliRunner().invoke(main, ["run", "--model", "tiny_learned:TinyLearned", "--num-patterns", "16",
                                         "--queries", "32", "--out", "straight", "--no-progress",
                                         "--checkpoint-dir", "machine3"])
    assert straight.exit_code == 0, straight.output
    (uninterrupted,) = records_in(tmp_path / "straight")
    assert record["errors"] == uninterrupted["errors"]  # the optimiser carried on: straight training's numbers
    assert CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "machine2"]).exit_code == 0
    assert torch.load(shipped, weights_only=False)["step"] == 6
    assert "optimizer" not in torch.load(shipped, weights_only=False)
    older = CliRunner().invoke(main, ["ship", "--checkpoint", str(carried)])  # the paused one again: kept out
    assert older.exit_code == 0 and "kept the shipped" in older.output and "(step 1)" in older.output
    assert torch.load(shipped, weights_only=False)["step"] == 6
    missing = CliRunner().invoke(main, ["ship", "--checkpoint", "nowhere/ebmm-gpu-0.pt"])
    assert missing.exit_code != 0 and "no checkpoint file nowhere/ebmm-gpu-0.pt" in missing.output
    assert exited_cleanly(missing)
    (tmp_path / "other").mkdir()  # another model's weights, trained further, under this key: refused
    other = torch.load(shipped, weights_only=False)
    torch.save({**other, "step": 100, "config": {**other["config"], "steps": 100},
                "model": {"weight": torch.zeros(3, 3)}, "parameters": ["weight"]}, tmp_path / "other" / carried.name)
    wrong = CliRunner().invoke(main, ["ship", "--checkpoint", str(tmp_path / "other" / carried.name)])
    assert wrong.exit_code == 1 and "holds other weights (names or shapes) than the shipped" in wrong.output
    assert exited_cleanly(wrong) and torch.load(shipped, weights_only=False)["step"] == 6



def test_the_cache_takes_the_shipped_checkpoint_when_it_is_trained_further_or_the_cached_one_is_corrupt(tmp_path,
                                                                                                     capsys):
    """A checkpoint paused in this cache at step 2 and trained to step 6 elsewhere (then shipped) resumes
    from 6; a cached one trained further than the shipped one is kept; an unreadable one is set aside (with a
    warning) and replaced."""
    from membench import checkpoints

    def checkpoint(step: int) -> dict:
        return {"model": {}, "generator": torch.Generator().get_state(), "step": step, "elapsed_s": 1.0, "curve": []}

    shipped, cache = tmp_path / "shipped", tmp_path / "cache"  # conftest's shipped folder
    shipped.mkdir()
    cache.mkdir()
    torch.save(checkpoint(6), shipped / "key.pt")
    for cached, expected in ((2, 6), (9, 9), (None, 6)):
        if cached is None:
            (cache / "key.pt").write_bytes(b"not a checkpoint")
        else:
            torch.save(checkpoint(cached), cache / "key.pt")
        path = checkpoints.checkpoint_path("key", cache)
        assert torch.load(path, weights_only=True)["step"] == expected, (cached, expected)
    assert (cache / "key.pt.corrupt").read_bytes() == b"not a checkpoint"  # kept for inspection, not overwritten
    warned = f"checkpoint {cache / 'key.pt'} is unreadable; moved it to {cache / 'key.pt.corrupt'}"
    assert warned in capsys.readouterr().err


def test_a_damaged_shipped_checkpoint_is_named_and_never_copied_into_the_cache(tmp_path, capsys):
    """A shipped file that does not read (truncated in the checkout) stays where it is, unused, with a warning
    naming it and how to restore it; the cache gets nothing from it."""
    from membench import checkpoints

    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "key.pt").write_bytes(b"truncated")
    path = checkpoints.checkpoint_path("key", tmp_path / "cache")
    assert not path.exists() and (tmp_path / "shipped" / "key.pt").read_bytes() == b"truncated"
    assert f"shipped checkpoint {tmp_path / 'shipped' / 'key.pt'} is unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("change, problem", [
    ({"model": {"weight": torch.tensor([1.0, float("nan")])}}, "its tensors weight hold NaN values"),
    ({"model": {"weight": torch.tensor([float("nan")]), "unset": torch.tensor([float("nan")])}, "parameters": []},
     None),  # a buffer (not listed as a parameter) may hold NaN by design
    ({"model": {"weight": torch.tensor([float("nan")])}, "parameters": ["weight"]}, "its parameters weight hold NaN"),
    ({"step": 7, "config": {"steps": 5}}, "step 7 is beyond the 5 its configuration plans"),
])
def test_a_checkpoint_no_training_saves_does_not_read(tmp_path, change, problem):
    """NaN parameters (training stops before saving them; every floating tensor counts in a checkpoint from before
    they were listed) or more steps than planned: such a file is refused wherever it is read (cache, shipping,
    unpacking), so it never replaces a shipped checkpoint; a NaN buffer is no such problem."""
    from membench.checkpoints import read_checkpoint

    torch.save({"model": {}, "generator": torch.Generator().get_state(), "step": 1, "elapsed_s": 1.0, "curve": [],
                **change}, tmp_path / "key.pt")
    if problem is None:
        assert read_checkpoint(tmp_path / "key.pt")["step"] == 1
        return
    with pytest.raises(ValueError, match=problem):
        read_checkpoint(tmp_path / "key.pt")


def test_episodes_drawn_ahead_are_the_episodes_drawn_in_turn():
    config = TrainConfig(steps=5, batch_size=3, num_patterns=(4, 8, 12), curriculum_steps=2)
    streams = [EpisodeStream(BinaryTask(4), config, torch.Generator().manual_seed(0), ahead) for ahead in (False, True)]
    try:
        for step in range(config.steps):
            (task_a, a), (task_b, b) = (stream.take(step) for stream in streams)
            assert task_a.spec.num_patterns == task_b.spec.num_patterns
            assert torch.equal(a.patterns, b.patterns) and torch.equal(a.queries, b.queries)
            assert torch.equal(streams[0].generator_state(), streams[1].generator_state()), step
    finally:
        streams[1].close()


def test_curriculum_draws_the_small_n_first_then_all(tmp_path: Path):
    """curriculum_steps = 6 over N in (8, 4, 12): steps 0-1 write 4 patterns, steps 2-3 4 or 8, then any N."""
    config = TrainConfig(steps=40, batch_size=1, lr=1e-3, log_every=1, checkpoint_every=100, num_patterns=(8, 4, 12),
                         curriculum_steps=6)
    result = meta_train(_linear_model(), BinaryTask(4), config, tmp_path / "ck.pt", torch.device("cpu"), seed=0,
                        progress=False)
    drawn = [row["num_patterns"] for row in result.curve]
    assert drawn[:2] == [4, 4] and set(drawn[2:4]) <= {4, 8} and set(drawn[6:]) == {4, 8, 12}, drawn


def test_a_record_made_with_an_older_preset_is_run_again(tmp_path: Path, monkeypatch):
    """Run ids name a preset, not its fields: when the preset's definition changes, `membench run` warns
    that the stored record is stale and redoes the run (a compile or CUDA-graph switch alone changes nothing)."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, args).exit_code == 0
    import tiny_learned

    original = tiny_learned.TinyLearned.presets.__func__

    def changed(**fields):
        def presets(cls, spec, options):
            quick = original(cls, spec, options)["quick"]
            return {"quick": dataclasses.replace(quick, train=dataclasses.replace(quick.train, **fields))}
        monkeypatch.setattr(tiny_learned.TinyLearned, "presets", classmethod(presets))

    changed(compile=True, cuda_graph=True)  # how updates run: the record stands
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 run(s) executed" in again.output and "older definition" not in again.output
    changed(steps=7)
    rerun = CliRunner().invoke(main, args)
    assert rerun.exit_code == 0 and "older definition of preset 'quick'; running it again" in rerun.output
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["training"]["steps"] == 7 and record["preset_config"]["train"]["steps"] == 7
    del record["preset_config"]  # a record from before presets were stored: judged by its training config
    path.write_text(json.dumps(record))
    same = CliRunner().invoke(main, args)
    assert same.exit_code == 0 and "0 run(s) executed" in same.output and "older definition" not in same.output
    changed(steps=9)
    older = CliRunner().invoke(main, args)
    assert older.exit_code == 0 and "older definition of preset 'quick'; running it again" in older.output
    assert json.loads(path.read_text())["training"]["steps"] == 9


def test_a_model_is_rebuilt_from_its_record_as_trained_after_its_preset_changed(tmp_path: Path, monkeypatch):
    """load_trained(..., preset_config=record's) rebuilds the model with the preset the record stores, so
    a figure or probe drawn after a preset change finds the trained checkpoint and reads as the run did;
    today's preset alone finds no checkpoint (another key). Today's preset here differs in a float field
    given as an int, a null field now a tuple and a late field the record leaves out (its default, 0)."""
    from membench.build import load_trained
    from membench.run_spec import RunSpec

    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    spec = RunSpec(**{name: record[name] for name in RunSpec.__dataclass_fields__})
    import tiny_learned

    original = tiny_learned.TinyLearned.presets.__func__

    def presets(cls, spec, options):
        quick = original(cls, spec, options)["quick"]
        return {"quick": Preset(dataclasses.replace(quick.model, sharpness=9),
                                dataclasses.replace(quick.train, steps=7, num_patterns=(16, 32), curriculum_steps=2))}
    monkeypatch.setattr(tiny_learned.TinyLearned, "presets", classmethod(presets))
    _, today, missing = load_trained(spec, tmp_path / "ck")
    assert missing is None and today.cfg.sharpness == 9
    _, model, found = load_trained(spec, tmp_path / "ck", preset_config=record["preset_config"])
    assert found is not None and model.cfg.sharpness == 4.0 and model.preset.train == original(
        tiny_learned.TinyLearned, None, {})["quick"].train
    assert model.bias.abs().sum() > 0  # the trained bias, not the zeros it starts from


def test_a_resumed_model_makes_no_step_once_the_time_is_up(tmp_path: Path):
    """time_limit_s counts from the call (waiting for another process included): a fresh model makes one
    step at 0 s, a resumed one none, so processes that waited for a paused checkpoint do not overrun."""
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=100, num_patterns=(4, 8))
    task, device, path = BinaryTask(4), torch.device("cpu"), tmp_path / "ck.pt"
    first = meta_train(_linear_model(), task, config, path, device, seed=0, progress=False, time_limit_s=0.0)
    saved = path.read_bytes()
    again = meta_train(_linear_model(), task, config, path, device, seed=0, progress=False, time_limit_s=0.0)
    assert (first.steps, again.steps) == (1, 1) and not again.finished and path.read_bytes() == saved


def test_a_run_whose_checkpoint_another_process_trains_waits_until_the_rest_are_done(tmp_path: Path, monkeypatch):
    """With N = 16's checkpoint busy (its lock held, as by another process), run_all does not wait for it:
    it finishes N = 32 first, then comes back to N = 16 once the lock is free."""
    import threading

    from membench.run_identity import checkpoint_key
    from membench.build import build_model
    from membench.runner import run_all
    from membench.registry import make_task
    from membench.store import file_lock

    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = get_suite("table1").expand("table1", ("tiny_learned:TinyLearned",), (0,), 32, "quick", (16, 32), None)
    busy = specs[0]
    task = make_task(busy.task)
    lock = tmp_path / "ck" / f"{checkpoint_key(busy, build_model(busy, task), task)}.pt.lock"
    held = contextlib.ExitStack()
    held.enter_context(file_lock(lock))
    fallback = threading.Timer(120, held.close)  # only if the deferral is broken: no deadlock
    fallback.daemon = True
    fallback.start()
    order = []

    def on_record(record):
        order.append(record["task"]["num_patterns"])
        held.close()  # "the other process" pauses once the free run is done

    run_all(specs, tmp_path / "out", device="cpu", checkpoint_dir=tmp_path / "ck", progress=False, on_record=on_record)
    fallback.cancel()
    assert order == [32, 16]


def test_precision_is_checked_and_trains_only_the_update_in_bf16(tmp_path: Path):
    """train.precision: an unknown value is refused with the valid ones; bf16 autocasts the meta-loss's forward
    only (its backward follows the forward's dtypes), giving a close, not equal, update, and nothing after it
    (clipping, AdamW, evaluation) runs under autocast; the training record names the precision."""
    with pytest.raises(MembenchError, match="unknown precision 'fp8'.*float32, tf32, bf16"):
        TrainConfig(precision="fp8")
    task = BinaryTask(8)
    episodes = task.sample(4, torch.Generator().manual_seed(1), split="train")
    deltas, losses = {}, {}
    for precision in ("float32", "bf16"):
        model = _linear_model()
        before = [p.detach().clone() for p in model.parameters()]
        autocast_in = {}
        meta_loss = model.meta_loss

        def spy(*args):
            autocast_in["forward"] = torch.is_autocast_enabled("cpu")
            loss, retrievals = meta_loss(*args)
            loss.register_hook(lambda grad: autocast_in.update(backward=torch.is_autocast_enabled("cpu")))
            return loss, retrievals

        model.meta_loss = spy
        out = Stepper(model, TrainConfig(lr=1e-3, clip_norm=1.0, precision=precision),
                      torch.device("cpu")).step(episodes.patterns, episodes.queries)
        assert autocast_in == {"forward": precision == "bf16", "backward": False}
        assert not torch.is_autocast_enabled("cpu")
        assert bool(out.finite) and all(p.dtype == torch.float32 for p in model.parameters())
        assert model.read(model.write(episodes.patterns), episodes.queries).dtype == torch.float32
        deltas[precision] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        losses[precision] = out.loss.item()
    assert losses["bf16"] != losses["float32"] and abs(losses["bf16"] - losses["float32"]) < 0.05 * losses["float32"]
    assert torch.nn.functional.cosine_similarity(deltas["bf16"], deltas["float32"], dim=0) > 0.9
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, clip_norm=1.0, log_every=1, precision="bf16")
    trained = meta_train(_linear_model(), task, config, tmp_path / "bf16.pt", torch.device("cpu"), seed=0,
                         progress=False)
    (stretch,) = trained.history
    assert stretch["precision"] == "bf16" and stretch["matmul_precision"] == "highest"


def test_bf16_on_a_cpu_without_bf16_matmuls_warns_once_per_stepper(monkeypatch, capsys):
    """bf16 meta-training on a CPU that emulates bfloat16 products is allowed, with one line saying it is slow."""
    from membench import stepper as stepper_module

    for native, precision, warned in ((False, "bf16", True), (True, "bf16", False), (False, "float32", False)):
        monkeypatch.setattr(stepper_module, "cpu_has_bf16_matmul", lambda: native)
        Stepper(_linear_model(), TrainConfig(precision=precision), torch.device("cpu"))
        err = capsys.readouterr().err
        assert ("without bfloat16 matrix instructions" in err and "train.precision=float32" in err) == warned, err


def test_tf32_is_cudas_and_only_inside_an_update(monkeypatch):
    """tf32 on the CPU: the stepper is built (a finished TF32 checkpoint evaluates anywhere) and an update is
    refused with the fix; a TF32 update's matmul precision reads "high". On CUDA, the TF32 flags are on inside an
    update only, and restored when it fails."""
    episodes = BinaryTask(8).sample(2, torch.Generator().manual_seed(1), split="train")
    on_cpu = Stepper(_linear_model(), TrainConfig(precision="tf32"), torch.device("cpu"))
    assert on_cpu.matmul_precision == "high"  # what a TF32-trained stretch's record says (torch's name for TF32)
    with pytest.raises(MembenchError, match="precision 'tf32' is CUDA's.*float32 or bf16"):
        on_cpu.step(episodes.patterns, episodes.queries)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = _linear_model()
    seen = []

    def failing(*args):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        raise RuntimeError("out of memory")

    model.meta_loss = failing
    with pytest.raises(RuntimeError, match="out of memory"):  # no CUDA needed: the update fails first
        Stepper(model, TrainConfig(precision="tf32"), torch.device("cuda")).step(episodes.patterns, episodes.queries)
    assert seen == [(True, True)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)


def test_committed_learned_rows_keep_their_checkpoint_keys_and_ship_them():
    """Every committed Table 1 record of a learned model whose preset is today's names the checkpoint key
    today's code computes for it (late config fields at their defaults leave keys alone), and that
    checkpoint is shipped: a fresh clone evaluates the row without training."""
    from membench import build, run_identity
    from membench.registry import make_task
    from membench.store import ResultsStore
    from membench.run_spec import RunSpec

    root = Path(__file__).resolve().parent.parent
    checked = 0
    for record in ResultsStore(root / "results" / "table1").records():
        if not record.get("training"):
            continue
        spec = RunSpec(**{name: record[name] for name in ("suite", "model", "task", "budget", "seed", "queries",
                                                          "preset", "options")})
        task = make_task(spec.task)
        model = build.build_model(spec, task)
        recorded = record.get("preset_config")
        if recorded is None or run_identity.comparable_preset(recorded) != run_identity.comparable_preset(model.preset.to_dict()):
            continue  # made with an older definition of its preset (the old gpu row): not a fresh clone's to evaluate
        key = run_identity.checkpoint_key(spec, model, task)
        assert record["training"]["checkpoint_key"] == key, f"{record['run_id']}: its checkpoint key changed"
        assert (root / "results" / "checkpoints" / f"{key}.pt").is_file(), f"{key}.pt is not shipped"
        checked += 1
    assert checked >= 40  # eight learned models at five N


@pytest.mark.parametrize("compile", [False, True])
def test_an_error_in_the_meta_loss_is_raised_as_itself(compile: bool, capsys):
    """A meta-loss that raises stops training with its own error, eager or compiled (where the compiled
    attempt fails first, one line says training goes on eagerly, and the eager error is raised), never a
    recursion of fallbacks."""
    model = _linear_model()

    def broken(self, patterns, queries):
        raise ValueError("a genuine bug in meta_loss")

    model.__class__ = type("Broken", (type(model),), {"meta_loss": broken})  # a method: a new bound one per access
    episodes = BinaryTask(4).sample(2, torch.Generator().manual_seed(1), split="train")
    stepper = Stepper(model, TrainConfig(lr=1e-3, clip_norm=1.0, compile=compile), torch.device("cpu"))
    with pytest.raises(ValueError, match="a genuine bug in meta_loss"):
        stepper.step(episodes.patterns, episodes.queries)
    assert capsys.readouterr().err.count("torch.compile failed") == int(compile)


CHECKPOINT_REST = {"generator": torch.Generator().get_state(), "step": 1, "elapsed_s": 0.0, "curve": []}


def test_an_optimiser_state_saved_under_cuda_graphs_resumes_on_a_cpu(tmp_path: Path):
    """A full checkpoint made on CUDA with graphs (AdamW capturable, a tensor learning rate) resumes on a CPU,
    where the optimiser is not capturable: its state is adapted on load, and the resumed update matches one
    from the same state saved on a CPU."""
    from membench.checkpoints import load_checkpoint

    task = BinaryTask(4)
    episodes = task.sample(2, torch.Generator().manual_seed(1), split="train")
    config = TrainConfig(lr=1e-3, clip_norm=1.0)
    stepper = Stepper(_linear_model(), config, torch.device("cpu"))
    stepper.step(episodes.patterns, episodes.queries)
    state = stepper.optimizer.state_dict()
    as_on_cuda = {**state, "param_groups": [{**g, "capturable": True, "lr": torch.tensor(g["lr"])}
                                            for g in state["param_groups"]]}
    updated = {}
    for name, optimizer_state in (("cpu", state), ("cuda", as_on_cuda)):
        torch.save({"model": stepper.model.state_dict(), "optimizer": optimizer_state, **CHECKPOINT_REST},
                   tmp_path / f"{name}.pt")
        resumed = Stepper(_linear_model(), config, torch.device("cpu"))
        assert load_checkpoint(tmp_path / f"{name}.pt", resumed.model, resumed.optimizer)
        resumed.after_load()
        assert [(g["capturable"], type(g["lr"])) for g in resumed.optimizer.param_groups] == [(False, float)]
        resumed.step(episodes.patterns, episodes.queries)
        updated[name] = torch.cat([p.detach().flatten() for p in resumed.model.parameters()])
    torch.testing.assert_close(updated["cuda"], updated["cpu"], rtol=0, atol=0)


def test_a_checkpoint_that_fails_to_load_leaves_the_model_as_it_was(tmp_path: Path):
    """Weights that load but an optimiser state that does not fit: the checkpoint is moved aside and the model
    keeps its own initial values (training starts afresh), not the checkpoint's weights."""
    from membench.checkpoints import load_checkpoint

    trained, fresh = _linear_model(), _linear_model()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)
    before = {name: value.clone() for name, value in fresh.state_dict().items()}
    optimizer_state = torch.optim.AdamW(trained.parameters()).state_dict()
    optimizer_state["param_groups"].append(dict(optimizer_state["param_groups"][0], params=[]))  # one group too many
    torch.save({"model": trained.state_dict(), "optimizer": optimizer_state, **CHECKPOINT_REST}, tmp_path / "ck.pt")
    stepper = Stepper(fresh, TrainConfig(lr=1e-3, clip_norm=1.0), torch.device("cpu"))
    assert load_checkpoint(tmp_path / "ck.pt", fresh, stepper.optimizer) is None
    assert (tmp_path / "ck.pt.corrupt").exists() and not (tmp_path / "ck.pt").exists()
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_a_second_unreadable_checkpoint_is_set_aside_beside_the_first(tmp_path: Path, capsys):
    """Each unreadable checkpoint at one path is kept for inspection: the second goes to `.corrupt-2`, the first
    stays as it was, and each is named on stderr."""
    from membench.checkpoints import load_checkpoint

    for number, content in enumerate((b"first: not a checkpoint", b"second: not one either"), start=1):
        (tmp_path / "ck.pt").write_bytes(content)
        assert load_checkpoint(tmp_path / "ck.pt", _linear_model()) is None
        assert "unreadable" in capsys.readouterr().err
    assert (tmp_path / "ck.pt.corrupt").read_bytes() == b"first: not a checkpoint"
    assert (tmp_path / "ck.pt.corrupt-2").read_bytes() == b"second: not one either"
    assert not (tmp_path / "ck.pt").exists()


def test_an_unfinished_checkpoint_carries_its_optimiser_state_only_up_to_the_limit(monkeypatch):
    """What travels of a paused run: its AdamW state while that is small enough, else the weights alone (the
    next machine restarts AdamW); a finished run never carries it."""
    from membench import checkpoints

    model = _linear_model()
    stepper = Stepper(model, TrainConfig(lr=1e-3, clip_norm=1.0), torch.device("cpu"))
    episodes = BinaryTask(4).sample(2, torch.Generator().manual_seed(0), split="train")
    stepper.step(episodes.patterns, episodes.queries)  # AdamW's moments exist
    saved = {"model": model.state_dict(), "optimizer": stepper.optimizer.state_dict(), **CHECKPOINT_REST,
             "config": {"steps": 5}}
    assert "optimizer" in checkpoints.portable(saved)
    assert "optimizer" not in checkpoints.portable({**saved, "step": 5})  # finished: weights only
    monkeypatch.setattr(checkpoints, "RESUME_STATE_MAX_MB", 1e-4)  # 105 bytes: less than the moments hold
    light = checkpoints.portable(saved)
    assert "optimizer" not in light and light["step"] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(light["model"][name], tensor), name


def test_ship_takes_the_shipped_copy_of_an_unreadable_cached_file_and_fails_without_one(tmp_path: Path, monkeypatch,
                                                                                         capsys):
    """A truncated file in the cache: `ship` leaves the readable shipped copy as it is (warned, nothing
    written); with no shipped copy either, it exits 1 with one line naming the file."""
    from membench.shipping import ship_checkpoints

    assert CliRunner().invoke(main, [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "cache"]).exit_code == 0
    (cached,) = (tmp_path / "cache").glob("*.pt")
    shipped = tmp_path / "shipped" / cached.name
    assert ship_checkpoints(tmp_path / "out", tmp_path / "cache") == [shipped]
    good = shipped.read_bytes()
    cached.write_bytes(cached.read_bytes()[:100])
    capsys.readouterr()
    assert ship_checkpoints(tmp_path / "out", tmp_path / "cache") == [] and shipped.read_bytes() == good
    assert f"checkpoint {cached} is unreadable" in capsys.readouterr().err
    shipped.unlink()
    result = CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "cache"])
    assert result.exit_code == 1 and exited_cleanly(result), result.output
    assert f"1 checkpoint file(s) unreadable, not shipped (cache/{cached.name})" in result.output
    assert not shipped.exists()


def test_ship_fails_naming_a_record_whose_checkpoint_is_nowhere_after_shipping_the_others(tmp_path: Path,
                                                                                       monkeypatch):
    """A record whose checkpoint is neither cached nor shipped cannot be evaluated on a fresh clone: `ship`
    ships the rest, then exits 1 with one line naming the record and the fix."""
    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "cache"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, [*args[:-2], "--checkpoint-dir", "other", "--seeds", "1"]).exit_code == 0
    (gone,) = (tmp_path / "other").glob("*.pt")
    gone.unlink()
    result = CliRunner().invoke(main, ["ship", "--out", "out", "--checkpoint-dir", "cache"])
    assert result.exit_code == 1 and exited_cleanly(result), result.output
    (record,) = [r for r in records_in(tmp_path / "out") if r["seed"] == 1]
    assert f"{gone.name} of {record['run_id']}" in result.output and "(1 written)" in result.output, result.output
    assert "--force" in result.output
    assert [path.name for path in (tmp_path / "shipped").glob("*.pt")] == [
        next((tmp_path / "cache").glob("*.pt")).name]


def test_a_checkpoint_over_the_shipping_limit_is_named_and_not_shipped(tmp_path: Path, monkeypatch, capsys):
    """`ship` refuses a checkpoint larger than its limit with a warning naming it and its size, and writes
    nothing in the shipped folder."""
    from membench.shipping import ship_checkpoints

    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "cache"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (cached,) = (tmp_path / "cache").glob("*.pt")
    capsys.readouterr()
    assert ship_checkpoints(tmp_path / "out", tmp_path / "cache", target=tmp_path / "shipped", max_mb=1e-6) == []
    err = capsys.readouterr().err
    assert f"checkpoint {cached} is" in err and "over 1e-06 MB: not shipped" in err, err
    assert not (tmp_path / "shipped").exists() or not any((tmp_path / "shipped").iterdir())


def test_how_updates_run_leaves_the_checkpoint_key_alone():
    """CUDA graphs and compiling change how an update runs, not what it computes: a checkpoint trained with
    graphs resumes without them (e.g. when `make gpu-graph-check` fails); the steps do change the key."""
    from membench import build, run_identity
    from membench.registry import make_task
    from membench.suites import get_suite

    (spec,) = get_suite("table1").expand("table1", ("memory_networks",), (0,), 64, "gpu", (16,))
    task = make_task(spec.task)
    model = build.build_model(spec, task)
    assert model.preset.train.cuda_graph  # the gpu preset replays graphs
    key = run_identity.checkpoint_key(spec, model, task)
    for fields, same in (({"cuda_graph": False}, True), ({"compile": True}, True), ({"steps": 7}, False)):
        model.preset = dataclasses.replace(model.preset, train=dataclasses.replace(model.preset.train, **fields))
        assert (run_identity.checkpoint_key(spec, model, task) == key) == same, fields


def test_a_fresh_model_is_initialised_once_from_training_patterns_and_a_resumed_one_is_not(tmp_path: Path,
                                                                                          monkeypatch):
    from ebmm.memory import EBMM

    seen = []
    monkeypatch.setattr(EBMM, "initialise", lambda self, patterns: seen.append(patterns.clone()))
    task, device = BinaryTask(4), torch.device("cpu")
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=100)
    meta_train(_linear_model(), task, config, tmp_path / "a.pt", device, seed=0, progress=False)
    assert len(seen) == 1 and seen[0].shape == (128, 4, 128)  # whole episodes, 512 patterns
    meta_train(_linear_model(), task, dataclasses.replace(config, steps=3), tmp_path / "a.pt", device, seed=0,
               progress=False)
    assert len(seen) == 1                                     # resumed: initialised from its checkpoint
    meta_train(_linear_model(), task, config, tmp_path / "b.pt", device, seed=0, progress=False)
    torch.testing.assert_close(seen[1], seen[0])              # the same seed sees the same patterns
    meta_train(_linear_model(), task, config, tmp_path / "c.pt", device, seed=1, progress=False)
    assert not torch.equal(seen[2], seen[0])
    mixed = dataclasses.replace(config, num_patterns=(4, 8))  # one checkpoint for every N: one batch too
    for n in (4, 8):
        meta_train(_linear_model(), BinaryTask(n), mixed, tmp_path / f"mixed{n}.pt", device, seed=0, progress=False)
    assert seen[3].shape == (64, 8, 128) and torch.equal(seen[3], seen[4])


def test_a_reader_leaves_an_unreadable_checkpoint_where_it_is(tmp_path: Path, monkeypatch, capsys):
    """load_trained only reads (figures, probes): an unreadable checkpoint is reported, not renamed to
    .corrupt as training does before it starts afresh, and the model comes back untrained."""
    from membench.build import load_trained
    from membench.run_spec import RunSpec

    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    spec = RunSpec(**{name: record[name] for name in RunSpec.__dataclass_fields__})
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    checkpoint.write_bytes(b"junk")
    _, model, found = load_trained(spec, tmp_path / "ck", preset_config=record["preset_config"])
    assert found is None and checkpoint.read_bytes() == b"junk" and not list((tmp_path / "ck").glob("*.corrupt*"))
    assert f"checkpoint {checkpoint} is unreadable" in capsys.readouterr().err


class _Scripted(AssociativeMemory):
    """A learned memory whose training retrievals are scripted: the patterns themselves (no error) for its first
    `good` updates, then `after(patterns, queries)`."""

    trainable = True

    def memory_floats(self, spec):
        return 0

    def write(self, patterns):
        return patterns

    def read(self, state, queries):
        return queries

    def __init__(self, good: int, after):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.good, self.after, self.calls = good, after, 0

    def meta_loss(self, patterns, queries):
        self.calls += 1
        retrievals = patterns if self.calls <= self.good else self.after(patterns, queries)
        return (self.weight - 1) ** 2, retrievals


@pytest.mark.parametrize("good, after, collapses", [
    (12, lambda patterns, queries: 1 - patterns, True),    # learned, then every bit wrong: collapsed
    (12, lambda patterns, queries: queries, True),         # learned, then the queries unchanged (chance): collapsed
    (12, lambda patterns, queries: torch.where(queries == 0.5, 1 - patterns, patterns), True),
    (0, lambda patterns, queries: queries, False),         # never learned (as an image quick preset): trains on
    (4, lambda patterns, queries: queries, False),         # no ten logged updates at half the error on average
    (40, lambda patterns, queries: 1 - patterns, False)])  # learned to the end
def test_a_model_gone_back_to_chance_stops_as_collapsed_and_one_that_never_learned_trains_on(
        tmp_path: Path, good: int, after, collapses: bool):
    """Once ten logged updates in a row erred at most half what the queries returned unchanged err on average,
    ten logged updates in a row each erring 75% of that or more stop training with TrainingDiverged naming the
    collapse and the fix; its last checkpoint stays. A model that never learned (no better than the queries from the start) is not
    stopped, nor one that keeps what it learned."""
    from membench.errors import TrainingDiverged

    model = _Scripted(good, after)
    config = TrainConfig(steps=40, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    path = tmp_path / "scripted.pt"
    train = lambda: meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False)  # noqa: E731
    if not collapses:
        assert train().finished
        return
    with pytest.raises(TrainingDiverged, match=r"collapsed: its last 10 logged updates \(to step 22\) erred at least "
                                               r"75% .* Fix: lower the learning rate .*kept at"):
        train()
    assert torch.load(path, weights_only=False)["step"] == 20


def test_the_collapse_window_goes_on_across_a_pause(tmp_path: Path):
    """Trained to step 18 (six bad logged updates in the window), then resumed to 40: it stops at step 22, as
    the run without a pause does, not ten logged updates after the resume."""
    from membench.errors import TrainingDiverged

    model, path = _Scripted(12, lambda patterns, queries: queries), tmp_path / "scripted.pt"
    config = TrainConfig(steps=40, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    train = lambda steps: meta_train(model, BinaryTask(8), dataclasses.replace(config, steps=steps), path,  # noqa: E731
                                     torch.device("cpu"), 0, progress=False)
    assert train(18).finished and len(torch.load(path, weights_only=False)["guard_shares"]) == 10
    with pytest.raises(TrainingDiverged, match=r"collapsed: its last 10 logged updates \(to step 22\)"):
        train(40)


def test_a_sigterm_after_trainings_last_look_at_the_flag_still_stops_the_command(tmp_path: Path, monkeypatch):
    """A SIGTERM (a scheduler's stop) arriving while training winds up, after the loop last read the flag, is not
    swallowed: TrainingInterrupted once training's finished checkpoint is written, instead of evaluating on."""
    import os
    import signal

    from membench import training
    from membench.checkpoints import read_checkpoint
    from membench.errors import TrainingInterrupted

    close = training.EpisodeStream.close

    def sigterm_and_close(self):
        os.kill(os.getpid(), signal.SIGTERM)
        close(self)

    monkeypatch.setattr(training.EpisodeStream, "close", sigterm_and_close)
    model, path = _Scripted(100, None), tmp_path / "scripted.pt"
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    with pytest.raises(TrainingInterrupted, match="interrupted as meta-training ended, its checkpoint written"):
        meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False)
    assert read_checkpoint(path)["step"] == 4


def test_a_ctrl_c_while_a_finished_checkpoint_loads_stops_the_command(tmp_path: Path, monkeypatch):
    """The loop never runs for a finished checkpoint; a first Ctrl-C that arrived meanwhile is not lost: training
    raises TrainingInterrupted (the checkpoint unchanged), so the command stops instead of evaluating on."""
    import os
    import signal

    from membench import training
    from membench.errors import TrainingInterrupted

    model, path = _Scripted(100, None), tmp_path / "scripted.pt"
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    assert meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False).finished
    saved = path.read_bytes()
    load = training.load_checkpoint

    def load_and_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return load(*args, **kwargs)

    monkeypatch.setattr(training, "load_checkpoint", load_and_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="checkpointed at step 4 of 4"):
        meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False)
    assert path.read_bytes() == saved


def test_a_short_truncated_checkpoint_is_the_files_fault_not_the_machines(tmp_path: Path):
    """torch raises OSError on a truncated file of under 64 KiB; that is the file's failure: set aside as
    `.corrupt` and the model left untrained (training afresh), not an error blaming this machine on every rerun."""
    from membench.checkpoints import load_checkpoint

    model, path = _Scripted(100, None), tmp_path / "scripted.pt"
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    assert meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False).finished
    assert path.stat().st_size < 2**16
    path.write_bytes(path.read_bytes()[:-10])
    assert load_checkpoint(path, model) is None
    assert not path.exists() and (tmp_path / "scripted.pt.corrupt").exists()


def test_a_checkpoint_this_machine_cannot_load_is_left_where_it_is(tmp_path: Path, monkeypatch):
    """Out of memory while loading the optimiser's state (say, copies of a session sharing one GPU) is the
    machine's failure, not the file's: one clear error, and the checkpoint is not set aside as corrupt."""
    from membench.checkpoints import load_checkpoint

    model, path = _Scripted(100, None), tmp_path / "scripted.pt"
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, log_every=1, checkpoint_every=10)
    assert meta_train(model, BinaryTask(8), config, path, torch.device("cpu"), 0, progress=False).finished

    def out_of_memory(self, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", out_of_memory)
    with pytest.raises(MembenchError, match=r"could not load checkpoint .*scripted.pt on this machine "
                                            r"\(OutOfMemoryError: CUDA out of memory.*it is left as it is"):
        load_checkpoint(path, model, torch.optim.AdamW(model.parameters()))
    assert path.exists() and not list(tmp_path.glob("*.corrupt*"))


def test_no_train_does_not_wait_for_a_checkpoint_in_training_when_told_not_to(tmp_path: Path):
    """run_all's first pass leaves runs whose checkpoint another process trains for the end (wait=False): with
    --no-train too, as_trained raises CheckpointBusy at once instead of waiting on the lock."""
    from membench.errors import CheckpointBusy
    from membench.no_train import as_trained
    from membench.store import file_lock

    with file_lock(tmp_path / "k.pt.lock"):  # held as meta_train holds it in another process
        with pytest.raises(CheckpointBusy, match="k.pt"):
            as_trained(None, tmp_path / "k.pt", None, None, wait=False)


def test_a_trained_record_names_the_weights_it_evaluated_and_its_checkpoint_its_key(tmp_path: Path, monkeypatch):
    """The record's weights_digest is the digest of its checkpoint's weights (what `unpack` checks a record against
    the shipped checkpoint by), and the checkpoint holds the key it was trained under (its file's stem)."""
    from membench.checkpoints import weights_digest

    args = [*_tiny_run(tmp_path, monkeypatch), "--checkpoint-dir", "ck"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    saved = torch.load(checkpoint, weights_only=False)
    (record,) = records_in(tmp_path / "out")
    assert record["training"]["weights_digest"] == weights_digest(saved["model"])
    assert saved["key"] == checkpoint.stem == record["training"]["checkpoint_key"]
