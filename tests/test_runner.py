"""Runner and results store: budgets, resume without duplicates, atomic records, determinism."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from membench import store as store_module
from membench.errors import MembenchError, OverBudgetError
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.records import RECORD_KEYS, read_record
from membench.runner import run_all
from membench.store import ResultsStore, write_json_atomic
from membench.suites import get_suite


class Oversized(AssociativeMemory):
    """Claims one float more than any budget allows."""

    def __init__(self, spec: TaskSpec):
        super().__init__()

    def memory_floats(self, spec: TaskSpec) -> int:
        return 10**9

    def write(self, patterns):
        return patterns

    def read(self, state, queries):
        return queries


class Crashing(AssociativeMemory):
    """Keeps each bit's mean (D floats); raises while evaluating at N = 32: a run that dies midway."""

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec

    def memory_floats(self, spec: TaskSpec) -> int:
        return spec.pattern_size

    def write(self, patterns):
        return patterns.mean(1)

    def read(self, state, queries):
        if os.environ.get("CRASH_AT_32") and self.spec.num_patterns == 32 and queries.shape[0] > 2:  # past the probe
            raise KeyboardInterrupt
        return queries


class NaNMemory(Crashing):
    def read(self, state, queries):
        return torch.full_like(queries, float("nan"))


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    pass


class Recorder(AssociativeMemory):
    """Learned (a bias on the erased bits' fill): keeps each bit's mean, and notes the patterns it trains on,
    the patterns of every write outside training, and the float32 matmul precision its reads ran at."""

    trainable = True
    trained_on: list[torch.Tensor] = []
    written: list[torch.Tensor] = []
    precisions: set[str] = set()

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.bias = torch.nn.Parameter(torch.zeros(spec.pattern_size))

    @classmethod
    def presets(cls, spec, options):
        return {"quick": Preset(RecorderConfig(), TrainConfig(steps=4, batch_size=2, lr=1e-2, log_every=1,
                                                              checkpoint_every=100))}

    @classmethod
    def from_preset(cls, spec, budget, preset):
        return cls(spec)

    def memory_floats(self, spec):
        return spec.pattern_size

    def write(self, patterns):
        if not self.training:
            Recorder.written.append(patterns.flatten(0, 1).clone())
        return patterns.mean(1)

    def read(self, state, queries):
        Recorder.precisions.add(torch.get_float32_matmul_precision())
        known = queries != self.spec.fill_value
        return torch.where(known, queries, torch.sigmoid(state.unsqueeze(1) + self.bias).expand_as(queries))

    def meta_loss(self, patterns, queries):
        Recorder.trained_on.append(patterns.flatten(0, 1).detach().clone())
        logits = (patterns.mean(1, keepdim=True) + self.bias).expand_as(queries)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, patterns), torch.sigmoid(logits).detach()


def test_a_learned_model_is_evaluated_on_episodes_it_never_trained_on_at_full_float32_precision(tmp_path,
                                                                                                monkeypatch):
    """Training, the write audit and evaluation draw from separate streams of the run's seed, so no pattern a
    model trained on is written again when it is scored; and reads run at the "highest" float32 matmul
    precision whatever the caller had set."""
    monkeypatch.setattr(Recorder, "trained_on", []), monkeypatch.setattr(Recorder, "written", [])
    monkeypatch.setattr(Recorder, "precisions", set())
    torch.set_float32_matmul_precision("medium")
    (record,) = run_all(_specs(f"{__name__}:Recorder", num_patterns=(16,), queries=64), tmp_path, device="cpu",
                        progress=False)
    assert record["training"]["steps"] == 4 and len(Recorder.trained_on) == 4
    trained = {tuple(row.tolist()) for batch in Recorder.trained_on for row in batch}
    written = {tuple(row.tolist()) for batch in Recorder.written for row in batch}
    assert len(trained) == 4 * 2 * 16 and len(written) >= 64  # every evaluation episode's patterns among them
    assert not trained & written
    assert Recorder.precisions == {"highest"}


def _specs(model: str, num_patterns=(16, 32, 48), seeds=(0,), queries=64):
    return get_suite("table1").expand("table1", (model,), seeds, queries, "quick", num_patterns)


def test_over_budget_model_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(OverBudgetError, match=r"Oversized.*1000000000.*8256"):
        run_all(_specs(f"{__name__}:Oversized"), tmp_path, device="cpu", progress=False)
    assert ResultsStore(tmp_path).records() == []


class GrowsWithN(Crashing):
    """Keeps the patterns themselves: N * D floats, within Table 1's budget at N = 16 (2048), over it at 96."""

    def memory_floats(self, spec: TaskSpec) -> int:
        return spec.num_patterns * spec.pattern_size

    def write(self, patterns):
        return patterns.flatten(1)


class LearnedGrowsWithN(Recorder):
    """Learned, and keeps the patterns themselves: within Table 1's budget at N = 16 (2048), over it at 96."""

    def memory_floats(self, spec: TaskSpec) -> int:
        return spec.num_patterns * spec.pattern_size

    def write(self, patterns):
        return patterns.flatten(1)

    def read(self, state, queries):
        return queries.clamp(0, 1)


class OversizedLearned(Recorder):
    """Learned, and declares more than any budget: refused before a single update."""

    def memory_floats(self, spec):
        return 10**9


def test_a_model_over_budget_at_one_n_is_refused_before_any_run_of_the_call(tmp_path):
    specs = [*_specs("hopfield_hebb", num_patterns=(16,)), *_specs(f"{__name__}:GrowsWithN", num_patterns=(16, 96))]
    with pytest.raises(OverBudgetError, match=r"GrowsWithN.*12288.*N=96.*8256"):
        run_all(specs, tmp_path, device="cpu", progress=False)
    assert ResultsStore(tmp_path).records() == []  # not its N = 16 run, nor the other model's, which came first
    _, grows = run_all(specs[:2], tmp_path, device="cpu", progress=False)  # within budget at N = 16: it runs
    assert grows["task"]["num_patterns"] == 16 and grows["memory_floats"] == 2048


def test_a_learned_model_over_budget_is_refused_before_it_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(Recorder, "trained_on", [])
    with pytest.raises(OverBudgetError, match=r"OversizedLearned.*1000000000.*8256"):
        run_all(_specs(f"{__name__}:OversizedLearned", num_patterns=(16,)), tmp_path / "out", device="cpu",
                checkpoint_dir=tmp_path / "checkpoints", progress=False)
    assert Recorder.trained_on == []  # no update
    assert not list((tmp_path / "checkpoints").rglob("*.pt")) and ResultsStore(tmp_path / "out").records() == []


def test_a_learned_model_over_budget_at_a_later_n_trains_at_none(tmp_path, monkeypatch):
    monkeypatch.setattr(Recorder, "trained_on", [])
    with pytest.raises(OverBudgetError, match=r"LearnedGrowsWithN.*12288.*N=96.*8256"):
        run_all(_specs(f"{__name__}:LearnedGrowsWithN", num_patterns=(16, 96)), tmp_path / "out", device="cpu",
                checkpoint_dir=tmp_path / "checkpoints", progress=False)
    assert Recorder.trained_on == []  # not at N = 16 either
    assert not list((tmp_path / "checkpoints").rglob("*.pt")) and ResultsStore(tmp_path / "out").records() == []


def test_record_holds_count_raw_errors_and_provenance(tmp_path):
    (record,) = run_all(_specs("hopfield_hebb", num_patterns=(16,)), tmp_path, device="cpu", progress=False,
                        command="membench run test")
    assert record["memory_floats"] == 8256 and record["budget"] == 8256
    assert record["num_queries"] == len(record["errors"]) >= 64
    assert record["command"] == "membench run test"
    for key in ("device", "torch", "membench", "python", "git_commit"):
        assert key in record["environment"]
    assert record["environment"]["device"] == "cpu" and record["environment"]["torch"] == torch.__version__
    assert record["environment"]["python"] == platform.python_version()
    assert record["environment"]["threads"] == torch.get_num_threads()  # they move the last digits of some sums
    assert record["wall_time_s"] > 0
    on_disk = json.loads(ResultsStore(tmp_path).record_path(record["run_id"]).read_text())
    assert on_disk["errors"] == record["errors"]


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("CRASH_AT_32", "1")
    with pytest.raises(KeyboardInterrupt):
        run_all(_specs(f"{__name__}:Crashing", queries=200), tmp_path, device="cpu", progress=False)
    first = ResultsStore(tmp_path).records()
    assert [r["task"]["num_patterns"] for r in first] == [16]  # N=16 finished, N=32 died, N=48 never ran
    assert not list(tmp_path.rglob("*.tmp"))

    monkeypatch.delenv("CRASH_AT_32")  # the same model, same run ids, no longer crashing
    executed = run_all(_specs(f"{__name__}:Crashing", queries=200), tmp_path, device="cpu", progress=False)
    assert [r["task"]["num_patterns"] for r in executed] == [32, 48]  # N=16 was skipped
    records = ResultsStore(tmp_path).records()
    assert sorted(r["task"]["num_patterns"] for r in records) == [16, 32, 48]
    assert len({r["run_id"] for r in records}) == 3
    assert records[[r["task"]["num_patterns"] for r in records].index(16)]["finished_at"] == first[0]["finished_at"]


def test_force_reruns_finished_runs(tmp_path):
    specs = _specs("raw_slots", num_patterns=(16,))
    run_all(specs, tmp_path, device="cpu", progress=False)
    assert run_all(specs, tmp_path, device="cpu", progress=False) == []
    assert len(run_all(specs, tmp_path, device="cpu", force=True, progress=False)) == 1
    assert len(ResultsStore(tmp_path).records()) == 1



@pytest.mark.parametrize("clock_s", [60, -3600])
def test_a_run_another_process_redid_while_this_one_waited_is_not_computed_again(tmp_path, monkeypatch, clock_s):
    """Two processes given --force (or finding stale records) share the runs out: one that another process
    rewrote since this call began is left as it is, not computed twice, whatever that process's host's clock
    stamped on it (an hour behind this one's, on a shared file system)."""
    from membench.store import write_atomic

    specs = _specs("raw_slots", num_patterns=(16, 32))
    run_all(specs, tmp_path, device="cpu", progress=False)
    claim = ResultsStore.claim

    def claim_after_the_other_process(self, run_id, blocking=False):
        if run_id == specs[0].run_id:  # the other process finished it while this one reached it
            path = self.record_path(run_id)
            write_atomic(path, lambda handle: handle.write(path.read_bytes()))
            stamped = time.time() + clock_s
            os.utime(path, (stamped, stamped))
        return claim(self, run_id, blocking)

    monkeypatch.setattr(ResultsStore, "claim", claim_after_the_other_process)
    (rerun,) = run_all(specs, tmp_path, device="cpu", force=True, progress=False)
    assert rerun["run_id"] == specs[1].run_id  # the first was left to the other process
    assert len(ResultsStore(tmp_path).records()) == 2


def test_a_model_that_is_not_trained_runs_once_whatever_the_preset(tmp_path):
    (record,) = run_all(_specs("raw_slots", num_patterns=(16,)), tmp_path, device="cpu", progress=False)
    gpu = get_suite("table1").expand("table1", ("raw_slots",), (0,), 64, "gpu", (16,))
    assert run_all(gpu, tmp_path, device="cpu", progress=False) == []
    assert [r["run_id"] for r in ResultsStore(tmp_path).records()] == [record["run_id"]]

def test_killed_process_leaves_no_partial_record(tmp_path):
    """SIGKILL a real `membench run` midway; the rerun completes every run exactly once."""
    (tmp_path / "held_memory.py").write_text(textwrap.dedent("""
        import os, pathlib, time
        from baselines.raw_slots import RawSlotMemory

        class HeldSlots(RawSlotMemory):
            def read(self, slots, queries):  # with MEMBENCH_TEST_GATE_FD: the third run's read says so, then waits
                gate = os.environ.get("MEMBENCH_TEST_GATE_FD")  # (not in the fresh-read process it starts)
                runs = pathlib.Path(os.environ.get("MEMBENCH_TEST_OUT", ".")).glob("runs/*.json")
                if gate and os.getppid() == int(os.environ["MEMBENCH_TEST_PARENT"]) and len(list(runs)) >= 2:
                    os.write(int(gate), b"held\\n")
                    while True:
                        time.sleep(1)
                return super().read(slots, queries)
    """))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "membench.cli", "run", "--model", "held_memory:HeldSlots",
            "--queries", "16", "--seeds", "0,1,2,3", "--out", str(out), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent)])}
    said, gate = os.pipe()
    held = {**env, "MEMBENCH_TEST_GATE_FD": str(gate), "MEMBENCH_TEST_OUT": str(out),
            "MEMBENCH_TEST_PARENT": str(os.getpid())}
    process = subprocess.Popen(args, cwd=tmp_path, env=held, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               pass_fds=(gate,))
    os.close(gate)
    with os.fdopen(said) as reader:  # blocks until the third run's read is held (or the process ends: "")
        ready, _, _ = select.select([reader], [], [], 600)  # a guard against a hang, not a timing
        line = reader.readline() if ready else "hung"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert line == "held\n" and len(list((out / "runs").glob("*.json"))) == 2, "killed while the third run reads"
    for path in (out / "runs").glob("*.json"):
        json.loads(path.read_text())  # every record on disk is complete
    subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True)
    records = ResultsStore(out).records()
    assert len(records) == 20 and len({r["run_id"] for r in records}) == 20


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"old": True})

    def broken_write(handle):
        handle.write(b'{"half":')
        raise OSError("disk full")

    with pytest.raises(OSError):
        store_module.write_atomic(path, broken_write)
    assert json.loads(path.read_text()) == {"old": True}
    assert list(tmp_path.iterdir()) == [path]


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    def errors(out: Path, seed: int):
        (record,) = run_all(_specs("hopfield_storkey", num_patterns=(48,), seeds=(seed,), queries=200), out,
                            device="cpu", progress=False)
        return record["errors"]

    first = errors(tmp_path / "a", 5)
    assert errors(tmp_path / "b", 5) == first
    assert errors(tmp_path / "c", 6) != first


@pytest.mark.parametrize("model", ["ebmm", "mann", "memory_networks", "memory_networks_learned",
                                   "differentiable_plasticity", "lstm", "dnc", "kanerva_machine"])
def test_a_learned_model_trained_twice_from_one_seed_gives_the_same_numbers(tmp_path, model):
    """Meta-training (a few updates, eager) and evaluation from one seed, twice in fresh folders and
    checkpoint caches: the same trained weights' numbers, query for query; another seed differs."""
    options = {"train.steps": 3, "train.batch_size": 2, "train.compile": False}

    def errors(name: str, seed: int):
        specs = [dataclasses.replace(spec, options={**spec.options, **options})
                 for spec in get_suite("table1-learned").expand("table1-learned", (model,), (seed,), 32, "quick",
                                                                (16,))]
        (record,) = run_all(specs, tmp_path / name, device="cpu", progress=False,
                            checkpoint_dir=tmp_path / f"ck-{name}")
        assert record["training"]["steps"] == 3
        return record["errors"]

    first = errors("a", 0)
    assert errors("b", 0) == first
    assert errors("c", 1) != first


def test_nan_retrievals_are_refused(tmp_path):
    with pytest.raises(MembenchError, match="NaN"):
        run_all(_specs(f"{__name__}:NaNMemory", num_patterns=(16,)), tmp_path, device="cpu", progress=False)
    assert ResultsStore(tmp_path).records() == []


def test_files_are_written_with_the_users_usual_permissions(tmp_path):
    """Records, tables and checkpoints go through write_atomic: with the permissions open() would give them
    (under the usual umask 022, rw-r--r--), not private to their owner as a temporary file is."""
    from membench.store import write_atomic

    path = write_atomic(tmp_path / "table.md", lambda handle: handle.write(b"x"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~store_module._UMASK
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):  # a user's own umask, as open() honours it
        target = tmp_path / f"under-{umask:o}.md"
        code = (f"import os; os.umask({umask}); from membench.store import write_atomic; "
                f"write_atomic({str(target)!r}, lambda handle: handle.write(b'x'))")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert target.stat().st_mode & 0o777 == mode, (oct(umask), oct(target.stat().st_mode))


def test_long_error_lists_are_stored_packed_and_read_back_exactly(tmp_path):
    """A Figure 3 point's 64,000 float32 errors are stored packed (far smaller) and read back as the very
    same numbers; a list that is not float32 numbers, or a short one, is stored as it is; a damaged packed
    field makes the record unreadable (named), so the run counts as unfinished."""
    errors = torch.rand(64_000, generator=torch.Generator().manual_seed(0)).mul(60).round().tolist()
    store = ResultsStore(tmp_path / "out")
    base = {**_record_fields(), "budget": 8256, "queries": 16}
    path = store.save({**base, "run_id": "packed", "errors": errors})
    assert path.stat().st_size < len(json.dumps(errors)) / 3
    assert read_record(path)["errors"] == errors
    float64 = [e + 1e-9 for e in errors]
    plain = store.save({**base, "run_id": "plain", "errors": float64})
    assert json.loads(plain.read_text())["errors"] == float64
    assert json.loads(store.save({**base, "run_id": "short", "errors": errors[:100]}).read_text())["errors"] == errors[:100]
    damaged = json.loads(path.read_text())
    damaged["errors"]["float32_zlib_base64"] = damaged["errors"]["float32_zlib_base64"][:-40]
    write_json_atomic(path, damaged)
    with pytest.raises(MembenchError, match="record .*packed.json is unreadable"):
        read_record(path)
    assert not store.has("packed")


def _record_fields() -> dict:
    """A record's fields, each of the right type (zeros where a number goes)."""
    return {**{key: 0 for key in RECORD_KEYS}, "task": {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 64},
            "environment": {"device": "cpu"}, "options": {}, "suite": "table1", "model": "raw_slots",
            "preset": "quick", "command": "membench run", "training": None}


@pytest.mark.parametrize("change, problem", [
    ({"budget": -1}, "budget is not a whole number of at least 0"),
    ({"queries": 0}, "queries is not a whole number of at least 1"),
    ({"seed": -2}, "seed is not a whole number of at least 0"),
    ({"memory_floats": 8257}, "memory_floats 8257 exceeds its budget 8256, which no run does"),
])
def test_a_record_no_run_makes_is_named_and_counts_as_unfinished(tmp_path, change, problem):
    """A hand-edited record (a negative budget or seed, no queries, more floats than its budget) is refused by
    name, so no table prints it and the run counts as unfinished."""
    store = ResultsStore(tmp_path)
    fields = {**_record_fields(), "budget": 8256, "queries": 16, "errors": [1.0] * 16, "run_id": "r"}
    path = store.save(fields)
    assert read_record(path)["run_id"] == "r"
    write_json_atomic(path, {**fields, **change})
    with pytest.raises(MembenchError, match=re.escape(problem)):
        read_record(path)
    assert not store.has("r")


@pytest.mark.parametrize("preset", ["quick", "gpu", "paper"])
@pytest.mark.parametrize("shape", [(128,), (1, 32, 32), (3, 32, 32)], ids=["table1", "omniglot", "cifar10"])
def test_learned_baselines_train_on_at_least_ebmms_updates_and_episodes(preset: str, shape: tuple[int, ...]):
    """The paper's rule (App. D: baselines always made more updates than EBMM), on Table 1's patterns and on
    both Figure 3 data sets: at each preset every learned baseline meta-trains with at least as many updates,
    and as many episodes (updates x episodes per update), as EBMM (on images: as either of its energies)."""
    from membench.interface import TaskSpec, resolve_preset
    from membench.registry import resolve_model
    from membench.suites import LEARNED_MODELS

    spec = TaskSpec(pattern_shape=shape, num_patterns=16, binary=shape[0] != 3)
    energies = [{}] if len(shape) == 1 else [{"energy": "resnet_fc"}, {"energy": "resnet_conv"}]
    ebmm = [resolve_preset(resolve_model("ebmm"), spec, preset, options).train for options in energies]
    most_steps, most_episodes = max(t.steps for t in ebmm), max(t.steps * t.batch_size for t in ebmm)
    short = {}
    for name in LEARNED_MODELS:
        train = resolve_preset(resolve_model(name), spec, preset, {}).train
        if train.steps < most_steps or train.steps * train.batch_size < most_episodes:
            short[name] = (train.steps, train.steps * train.batch_size)
    assert not short, (f"preset {preset}, patterns {shape}: fewer (updates, episodes) than EBMM's "
                       f"({most_steps}, {most_episodes}): {short}")


def test_with_ray_a_chain_whose_checkpoint_paused_trains_no_further(tmp_path):
    """The runs of one checkpoint form a chain of Ray tasks; once one pauses at the training time limit, the
    later ones come back paused without starting, so the limit bounds the model's training, not each run's."""
    from membench.ray_launcher import _execute

    spec = _specs("raw_slots", num_patterns=(16,))[0]
    paused = {"paused": "meta-training stopped at step 10"}
    returned = _execute(spec, str(tmp_path), "cpu", str(tmp_path / "ck"), "membench run", False, 1.0, True, {},
                        after=paused)
    assert returned == paused
    assert not (tmp_path / "runs").exists()
