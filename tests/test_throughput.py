"""The shared update (`Stepper`) and the throughput table; speed itself is measured, never asserted."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from membench.cli import main
from membench.errors import MembenchError, TrainingDiverged
from membench.budget import TABLE1_BUDGET
from membench.interface import TaskSpec, TrainConfig
from membench.stepper import Stepper
from membench.tasks import BinaryTask
from membench.throughput import COLUMNS, existing_table, run_specs
from membench.training import meta_train
from tests.conftest import REPO_ROOT, exited_cleanly
from tests.test_training import _linear_model


def test_cuda_graph_flag_is_eager_off_cuda_and_identical():
    task = BinaryTask(8)
    episodes = task.sample(2, torch.Generator().manual_seed(0), split="train")
    config = TrainConfig(lr=1e-3, clip_norm=1.0)
    models = [_linear_model(), _linear_model()]
    steppers = [Stepper(models[0], config, torch.device("cpu")),
                Stepper(models[1], dataclasses.replace(config, cuda_graph=True), torch.device("cpu"))]
    assert not steppers[1].graphs_on
    for stepper in steppers:
        out = stepper.step(episodes.patterns, episodes.queries)
        assert bool(out.finite) and out.retrievals.shape == episodes.patterns.shape
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def _three_updates(config: TrainConfig, **options) -> tuple[Stepper, dict[str, torch.Tensor]]:
    from tests.test_ebmm import small_model

    model, task = small_model(8, hops=1, write_steps=1, read_steps=2, **options)  # a small graph: a short compile
    stepper = Stepper(model, config, torch.device("cpu"))
    for seed in range(3):
        episodes = task.sample(2, torch.Generator().manual_seed(seed), split="train")
        assert bool(stepper.step(episodes.patterns, episodes.queries).finite)
    return stepper, model.state_dict()


@pytest.mark.parametrize("options", [{}, {"learn_write_norm": True}, {"n_scaled_rates": True}],
                         ids=["quick", "learned-write-norm", "n-scaled-rates"])
def test_compiled_updates_match_eager_updates(options):
    """The compiled meta-loss (closed-form inner loops, inductor) trains the same weights as eager updates."""
    config = TrainConfig(lr=1e-3, clip_norm=1.0)
    _, eager = _three_updates(config, **options)
    stepper, compiled = _three_updates(dataclasses.replace(config, compile=True), **options)
    if not stepper.compiled:
        pytest.skip("torch.compile does not work on this machine (the Stepper fell back to eager updates)")
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=f"compiled differs in {name}")


def _mann_updates(config: TrainConfig) -> tuple[Stepper, dict[str, torch.Tensor]]:
    """Three updates of a small MANN (16-bit patterns, N = 4) from one initialisation."""
    from baselines.mann import MANN

    torch.manual_seed(0)
    model = MANN.from_spec(TaskSpec((16,), 4, True), 16 * 8 + 2 * 8, "quick", memory_width=16, controller_size=8)
    task = BinaryTask(4, dim=16, erased=8)
    stepper = Stepper(model, config, torch.device("cpu"))
    for seed in range(3):
        episodes = task.sample(2, torch.Generator().manual_seed(seed), split="train")
        assert bool(stepper.step(episodes.patterns, episodes.queries).finite)
    return stepper, model.state_dict()


def test_membench_compile_compiles_a_baseline_whatever_its_preset_says_and_trains_the_same(monkeypatch):
    """MEMBENCH_COMPILE=1 compiles the meta-loss of a preset without `compile` (how the MANN gpu preset trains on
    a CPU), and the compiled updates train the weights eager ones do; =0 keeps a compiling preset eager."""
    config = TrainConfig(lr=1e-3, clip_norm=1.0)
    stepper, eager = _mann_updates(config)
    assert not stepper.compiled
    monkeypatch.setenv("MEMBENCH_COMPILE", "0")
    assert not _mann_updates(dataclasses.replace(config, compile=True))[0].compiled
    monkeypatch.setenv("MEMBENCH_COMPILE", "1")
    stepper, compiled = _mann_updates(config)
    if not stepper.compiled:
        pytest.skip("torch.compile does not work on this machine (the Stepper fell back to eager updates)")
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=f"compiled differs in {name}")


def test_a_bad_membench_compile_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("MEMBENCH_COMPILE", "yes")
    with pytest.raises(MembenchError, match=r"MEMBENCH_COMPILE='yes': use 1 .*, 0 .*, or unset it"):
        Stepper(_linear_model(), TrainConfig(lr=1e-3), torch.device("cpu"))


def test_a_failing_compile_warns_and_trains_eagerly(monkeypatch, capsys):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    config = TrainConfig(lr=1e-3, clip_norm=1.0)
    stepper, weights = _three_updates(dataclasses.replace(config, compile=True))
    err = capsys.readouterr().err
    assert not stepper.compiled and "torch.compile failed (InvalidCxxCompiler" in err
    assert err.count("compiling EBMM's meta-loss (torch.compile)") == 1  # said once, before the first update
    _, eager = _three_updates(config)
    for name in eager:
        assert torch.equal(weights[name], eager[name]), f"the eager fallback differs in {name}"


def test_divergence_is_caught_at_the_next_log_before_any_save(tmp_path):
    """A loss that turns non-finite at step 3 stops training at step 4 (its log), naming step 3."""
    model = _linear_model()
    real_loss = model.meta_loss
    calls = []

    def poisoned(patterns, queries):
        calls.append(1)
        loss, retrievals = real_loss(patterns, queries)
        return (loss * float("nan") if len(calls) == 3 else loss), retrievals

    model.meta_loss = poisoned
    config = TrainConfig(steps=8, batch_size=2, log_every=4, checkpoint_every=2, clip_norm=1.0)
    with pytest.raises(TrainingDiverged,
                       match="diverged at step 3.*Fix: lower the learning rate.*last checkpoint \\(step 2\\)"):
        meta_train(model, BinaryTask(4), config, tmp_path / "c.pt", torch.device("cpu"), 0, progress=False)
    saved = torch.load(tmp_path / "c.pt", weights_only=False)
    assert saved["step"] == 2 and all(torch.isfinite(t).all() for t in saved["model"].values())


def test_throughput_rows_merge_by_key(tmp_path):
    out = tmp_path / "throughput.csv"
    args = ["throughput", "--model", "memory_networks", "--device", "cpu", "--num-patterns", "16",
            "--batch-sizes", "2,4", "--steps", "2", "--warmup", "1", "--out", str(out)]
    for _ in range(2):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS and sorted(table["batch_size"]) == [2, 4]  # the rerun replaced its rows
    assert (table["episodes_per_s"] > 0).all() and set(table["device"]) == {"cpu"}
    import platform  # each row says how it was made: warm-up, seed, dirty or not, versions, command, seconds timed

    row = table.iloc[0]
    assert row["warmup"] == 1 and row["seed"] == 0 and str(row["dirty"]) in ("True", "False", "unknown")
    assert row["python"] == platform.python_version() and row["command"].startswith("membench ")
    assert 0 < row["wall_time_s"] and row["numpy"] == np.__version__
    changed = CliRunner().invoke(main, args + ["--option", "train.batch_size=3"])  # batch 2, 4 given: they win
    assert changed.exit_code == 0, changed.output
    table = pd.read_csv(out, keep_default_na=False)
    assert sorted(zip(table["options"], table["batch_size"])) == [("", 2), ("", 4), ("train.batch_size=3", 2),
                                                                   ("train.batch_size=3", 4)]  # rows of their own


def test_throughput_without_out_writes_beside_runs_not_into_a_checkouts_committed_table(tmp_path, monkeypatch):
    """No --out: membench-results/bench/throughput.csv, where `run` puts its records; results/ stays as it was."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["throughput", "--model", "memory_networks", "--device", "cpu", "--num-patterns",
                                       "16", "--batch-sizes", "2", "--steps", "1", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "membench-results" / "bench" / "throughput.csv")) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("column, into", [("device_name", 5), ("precision", 2), ("warmup", 0)])
def test_a_truncated_throughput_csv_is_refused_before_timing_and_left_as_it_is(tmp_path, column, into):
    """A last row cut `into` characters into a column's value: early, inside the precision ("fl"), or before a
    column that older rows lack (which must not pass for such a row)."""
    out = tmp_path / "throughput.csv"
    table = (REPO_ROOT / "results" / "bench" / "throughput.csv").read_text().splitlines()
    lines = [table[0], *[line for line in table[1:] if not line.endswith(",not recorded")][:3]]  # rows of today's
    index = table[0].split(",").index(column)                                                    # columns
    cut = len(",".join(lines[3].split(",")[:index])) + 1 + into
    assert existing_table(REPO_ROOT / "results" / "bench" / "throughput.csv") is not None  # whole, older rows too
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:cut] + "\n")  # the last row cut mid-value
    before = out.read_bytes()
    result = CliRunner().invoke(main, ["throughput", "--model", "memory_networks", "--device", "cpu", "--num-patterns",
                                       "16", "--steps", "1", "--out", str(out)])
    assert result.exit_code == 1 and "is not a complete throughput CSV (line 4 has no valid" in result.output, \
        result.output
    assert exited_cleanly(result) and out.read_bytes() == before


def test_a_throughput_csv_whose_last_line_is_cut_inside_its_last_column_is_refused(tmp_path):
    """A cut inside the command (the last column) leaves a valid-looking shorter value: the missing newline tells."""
    out = tmp_path / "throughput.csv"
    text = (REPO_ROOT / "results" / "bench" / "throughput.csv").read_text()
    out.write_text(text.rstrip("\n")[:-3])
    with pytest.raises(MembenchError, match="its last line is cut short"):
        existing_table(out)


def test_a_reference_named_by_a_short_hash_is_replaced_by_its_later_row(tmp_path):
    """`--reference 028ec1c` rows (the name as typed, before references were resolved) and `028ec1ca22` rows are
    one commit's: the later row replaces the earlier, as for any key."""
    from membench.throughput import merge

    out = tmp_path / "throughput.csv"
    table = existing_table(REPO_ROOT / "results" / "bench" / "throughput.csv")
    row = table[table["commit"].str.startswith("028ec1c")].iloc[0].to_dict()
    merge(out, [{**row, "commit": "028ec1c", "measured_at": "2026-01-01T00:00:00Z", "ms_per_step": 70.0}])
    merged = merge(out, [{**row, "commit": "028ec1ca22", "measured_at": "2026-02-01T00:00:00Z", "ms_per_step": 60.0}])
    assert list(merged["commit"]) == ["028ec1ca22"] and list(merged["ms_per_step"].astype(float)) == [60.0]


def test_throughput_times_the_preset_as_changed_by_its_options(tmp_path):
    """--option changes the preset as `membench run --option` does; an unknown field is one clear error."""
    args = ["throughput", "--model", "ebmm", "--device", "cpu", "--num-patterns", "8", "--steps", "1", "--warmup",
            "1", "--eager", "--out", str(tmp_path / "t.csv")]
    result = CliRunner().invoke(main, args + ["--option", "hidden=96", "--option", "train.batch_size=2"])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "t.csv").iloc[0]
    assert row["options"] == "hidden=96 train.batch_size=2" and row["batch_size"] == 2
    bad = CliRunner().invoke(main, args + ["--option", "hiden=96"])
    assert bad.exit_code != 0 and "hiden" in bad.output and exited_cleanly(bad)


def test_throughput_times_each_point_of_a_rate_sweep(tmp_path, data_root):
    """--suite fig3-cifar: a row per point of the model's curve, on the images (Memory Networks' points differ in
    budget alone); a suite that is neither table1 nor a sweep is one clear error."""
    out = tmp_path / "t.csv"
    args = ["throughput", "--suite", "fig3-cifar", "--model", "memory_networks", "--device", "cpu", "--steps", "1",
            "--warmup", "1", "--batch-sizes", "1", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["suite"]) == {"fig3-cifar"} and set(table["num_patterns"]) == {64}
    points = run_specs("fig3-cifar", ["memory_networks"], [64], "quick")
    assert sorted(table["budget"]) == sorted(s.budget for s in points) and len(points) > 1  # a row per point
    table1 = CliRunner().invoke(main, ["throughput", "--suite", "table1-classical", "--out", str(out)])
    assert table1.exit_code != 0 and "fig3-cifar" in table1.output and exited_cleanly(table1)


def test_rows_from_before_the_precision_column_are_float32_wherever_they_come_from(tmp_path):
    """A table on disk and rows carried back from a machine running older code, both without the late
    columns: each row is one float32 row, a measurement of the same key replacing the older one."""
    from membench.throughput import merge

    older = {"device": "cpu", "device_name": "x86_64", "model": "ebmm", "preset": "quick", "batch_size": 16,
             "num_patterns": 64, "episodes_per_s": 200.0, "ms_per_step": 80.0, "commit": "abc", "cuda_graph": False,
             "steps": 10, "threads": 2, "torch": "2.13.0", "measured_at": "2026-11-24T00:00:00Z"}
    out = tmp_path / "throughput.csv"
    pd.DataFrame([older, {**older, "model": "mann"}]).to_csv(out, index=False)  # no compiled, rounds, precision
    table = merge(out, [{**older, "episodes_per_s": 210.0}, {**older, "model": "lstm"}])  # carried back, as old
    assert len(table) == 3 and set(table["precision"]) == {"float32"} and set(table["rounds"]) == {1}
    assert set(table["options"]) == {""} and set(table["suite"]) == {"table1"}  # the preset and task as they were
    assert table.set_index("model").loc["ebmm", "episodes_per_s"] == 210.0  # the same key: replaced
    assert pd.read_csv(out)["precision"].notna().all()
    table = merge(out, [{**older, "threads": 16, "episodes_per_s": 900.0}, {**older, "torch": "2.11.0"}])
    assert sorted(table[table["model"] == "ebmm"]["episodes_per_s"]) == [200.0, 210.0, 900.0]  # other threads,
    #                                                                 another torch: other measurements, kept beside


def test_a_session_carries_the_rows_measured_since_it_began_to_the_second(tmp_path):
    """Rows keep whole seconds: a row stamped in the second the session began is its own, one stamped the second
    before is not; a table with no row of the session's gives nothing to carry."""
    import calendar

    from membench.throughput import merge, rows_since

    row = {"device": "cpu", "device_name": "x86_64", "model": "ebmm", "preset": "quick", "batch_size": 16,
           "num_patterns": 64, "episodes_per_s": 200.0, "ms_per_step": 80.0, "commit": "abc", "cuda_graph": False,
           "steps": 10, "threads": 2, "torch": "2.13.0", "measured_at": "2026-12-08T00:10:00Z"}
    began = calendar.timegm((2026, 12, 8, 0, 10, 0)) + 0.9  # 0.9 s into the row's second
    out = tmp_path / "throughput.csv"
    merge(out, [{**row, "model": "lstm", "measured_at": "2026-12-08T00:09:59Z"}, row])
    carried = tmp_path / "carried.csv"
    carried.write_bytes(rows_since(out, began))
    assert list(existing_table(carried)["model"]) == ["ebmm"]
    assert rows_since(out, began + 1) is None and rows_since(tmp_path / "absent.csv", began) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_training_matches_eager_training(tmp_path):
    """On CUDA: 6 updates on N in {4, 8} (two graphs), replayed, give the eager run's weights."""
    config = TrainConfig(steps=6, batch_size=2, lr=1e-3, clip_norm=1.0, log_every=1, num_patterns=(4, 8),
                         cosine_decay=True)
    results = []
    for graphs in (False, True):
        model = _linear_model()
        meta_train(model, BinaryTask(4), dataclasses.replace(config, cuda_graph=graphs), tmp_path / f"{graphs}.pt",
                   torch.device("cuda"), seed=0, progress=False)
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], msg=f"graph replay differs in {name}")


def test_one_round_frees_each_row_before_the_next_is_built(monkeypatch):
    """With one round the rows are built, timed and dropped one by one (large rows need not fit together)."""
    import weakref

    from membench import throughput

    class Built:  # stands for a row's model, batches and CUDA graphs
        pass

    alive = weakref.WeakSet()

    def prepare(spec, **_):
        assert not alive, "the previous row is still held while the next is built"
        built = Built()
        alive.add(built)
        return (lambda: 0.5 if built else 0.0), (lambda seconds: {"spec": spec, "seconds": seconds})

    monkeypatch.setattr(throughput, "prepare", prepare)
    rows = throughput.measure([{"spec": name} for name in "abc"])
    assert rows == [{"spec": name, "seconds": [0.5]} for name in "abc"]



def test_rows_timed_before_a_failing_row_are_kept(monkeypatch):
    """With one round each row reaches `on_row` (the CLI merges it into the table) as soon as it is timed, so a
    command that fails or is interrupted at a later row (out of memory, the session's time up) keeps them."""
    from membench import throughput

    def prepare(spec, **_):
        if spec == "c":
            raise KeyboardInterrupt  # the session interrupts the command while it builds the third row
        return (lambda: 0.5), (lambda seconds: {"spec": spec, "seconds": seconds})

    monkeypatch.setattr(throughput, "prepare", prepare)
    kept = []
    with pytest.raises(KeyboardInterrupt):
        throughput.measure([{"spec": name} for name in "abcd"], on_row=kept.append)
    assert kept == [{"spec": "a", "seconds": [0.5]}, {"spec": "b", "seconds": [0.5]}]

def test_rows_timed_beside_a_reference_keep_its_time_of_that_run(tmp_path, monkeypatch):
    """--reference: each row of the reference's update names the commit and that run's reference time, so two
    runs (say, with and without an option) keep their own ratios after the reference row itself is replaced by
    the second run's; a row of another model gets no speed-up."""
    import contextlib

    from membench import throughput

    reference_seconds = iter([0.08, 0.08, 0.12, 0.12])  # two rounds in each of two runs
    monkeypatch.setattr(throughput, "reference_tree", lambda commit: contextlib.nullcontext(tmp_path))
    monkeypatch.setattr(throughput, "time_reference", lambda tree: next(reference_seconds))
    monkeypatch.setattr(throughput, "matches_reference", lambda row: row["model"] == "memory_networks")  # its update
    monkeypatch.setattr(throughput, "resolve_commit", lambda name: name + "789abc")  # a commit of another history
    out = tmp_path / "t.csv"
    args = ["throughput", "--model", "memory_networks", "--model", "lstm", "--device", "cpu", "--num-patterns", "8",
            "--steps", "1",
            "--warmup", "1", "--rounds", "2", "--reference", "028ec1c0123456", "--out", str(out)]
    for extra in ([], ["--option", "train.batch_size=3"]):
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 0, result.output
        assert "speed-up" in result.output
    table = pd.read_csv(out, dtype={"options": str, "reference": str}).fillna({"options": "", "reference": ""})
    timed = table[table["model"] == "memory_networks"].set_index("options")
    assert timed.loc["", "reference_ms"] == 80.0 and timed.loc["train.batch_size=3", "reference_ms"] == 120.0
    assert set(timed["reference"]) == {"028ec1c012"}
    assert table.loc[table["model"] == "lstm", "reference_ms"].isna().all()  # another update: no speed-up
    (reference_row,) = table[table["commit"] == "028ec1c012"].itertuples()
    assert reference_row.ms_per_step == 120.0 and reference_row.reference == ""  # the second run's


def test_the_reference_is_recorded_as_the_commit_it_names(tmp_path, monkeypatch):
    """`--reference HEAD~1` was recorded as "HEAD~1": a later one's row would replace it (the same key). The commit
    it names is recorded; a name of no commit, or the commit being timed (its row would replace the rows timed
    beside it), is refused before anything is timed."""
    import contextlib

    from membench import throughput

    head = throughput.resolve_commit("HEAD~1")
    if head is None:
        pytest.skip("not a git checkout with history")
    monkeypatch.setattr(throughput, "reference_tree", lambda commit: contextlib.nullcontext(tmp_path))
    monkeypatch.setattr(throughput, "time_reference", lambda tree: 0.1)
    out = tmp_path / "t.csv"
    args = ["throughput", "--model", "memory_networks", "--device", "cpu", "--num-patterns", "8", "--steps", "1",
            "--out", str(out), "--reference"]
    result = CliRunner().invoke(main, args + ["HEAD~1"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, dtype={"commit": str})
    assert head[:10] in set(table["commit"]) and "HEAD~1" not in set(table["commit"])
    itself = CliRunner().invoke(main, args + ["HEAD"])
    assert itself.exit_code == 1 and "--reference HEAD is the commit being timed" in itself.output, itself.output
    assert len(pd.read_csv(out)) == len(table)
    assert throughput.resolve_commit("no-such-commit-name") is None and throughput.resolve_commit("--all") is None


def test_tf32_on_a_cpu_is_refused_before_any_row_is_built(tmp_path):
    result = CliRunner().invoke(main, ["throughput", "--model", "ebmm", "--device", "cpu", "--precision", "tf32",
                                       "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 1 and "--precision tf32 is CUDA's" in result.output and exited_cleanly(result)
    assert not (tmp_path / "t.csv").exists()
    session = CliRunner().invoke(main, ["session", "--time", "--model ebmm --precision tf32", "--device", "cpu",
                                        "--run", f"--model raw_slots --out {tmp_path}/results/table1",
                                        "--results", str(tmp_path / "results"),
                                        "--to", str(tmp_path / "s.tgz"), "--train-time-limit", "10"])
    assert session.exit_code == 1 and "--precision tf32 is CUDA's" in session.output, session.output


def test_cuda_graphs_on_a_cpu_are_refused_but_a_session_rehearses_without_them(tmp_path):
    """`throughput --cuda-graph` on the CPU is refused (it timed eager updates and wrote cuda_graph False); a
    session's --time asking for graphs, as the Makefile's GPU targets do, times eager ones in a CPU rehearsal."""
    from membench.cli_sessions import _timing_command

    result = CliRunner().invoke(main, ["throughput", "--model", "ebmm", "--device", "cpu", "--cuda-graph",
                                       "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 1 and "--cuda-graph is CUDA's" in result.output and exited_cleanly(result)
    assert not (tmp_path / "t.csv").exists()
    command = _timing_command("--model ebmm --steps 1 --cuda-graph", "cpu", tmp_path / "t.csv")
    assert command.index("--no-cuda-graph") > command.index("--cuda-graph")  # the last flag wins
    if not torch.cuda.is_available():  # a device this machine lacks: refused, naming the --time it came with
        with pytest.raises(MembenchError, match="^--time '--model ebmm': "):
            _timing_command("--model ebmm", "cuda", tmp_path / "t.csv")


def test_the_graph_check_compares_every_case_and_names_what_differs(capsys):
    """`python -m membench.graph_check` (run first in GPU sessions): its cases run here (eager on both
    sides on a CPU: equal), a difference is named per case, and without CUDA it says so and exits 2."""
    from membench import graph_check

    assert graph_check.mismatches(torch.device("cpu")) == []
    assert graph_check.mismatches(torch.device("cpu"), cases=graph_check.BASELINE_CASES) == []
    assert graph_check.mismatches(torch.device("cpu"), cases=graph_check.IMAGE_BASELINE_CASES) == []

    def drifting(name, device, graphs):  # replayed weights off by 1e-3
        return {"weight": torch.full((3,), 1e-3 if graphs else 0.0)}, 2

    found = graph_check.mismatches(torch.device("cpu"), run=drifting)
    assert [line.split(":")[0] for line in found] == list(graph_check.CASES)
    if not torch.cuda.is_available():
        assert graph_check.main([]) == 2 and "no CUDA device here" in capsys.readouterr().out


def test_the_graph_check_compares_what_each_update_returned_and_names_the_models_to_run_eagerly(capsys,
                                                                                             monkeypatch):
    """Each update's loss, finite flag and retrievals are compared as well as the final weights (a replayed
    update that returned a stale loss is found though the weights agree), and a failed check's last line names
    the failing cases' models, each once (EBMM's cases are one model)."""
    from membench import graph_check

    rates, set_lr = [], graph_check.Stepper.set_lr

    def recording(self, lr):  # the rate of each update, set as training sets it
        rates.append(lr)
        set_lr(self, lr)

    monkeypatch.setattr(graph_check.Stepper, "set_lr", recording)
    eager, captured = graph_check.updated("mann", torch.device("cpu"), False)
    assert captured == 0 and {"update 1 loss", "update 5 finite", "update 3 retrievals"} <= set(eager)
    assert len(set(rates)) == 5 and max(rates) == rates[1]  # a rate per update: warmed up, then decayed
    assert eager["update 2 retrievals"].shape[1] == graph_check.BINARY.num_patterns // 2  # the second shape's N

    def stale_loss(name, device, graphs):
        seen = dict(eager)
        if graphs:
            seen["update 2 loss"] = seen["update 1 loss"]
        return seen, 2

    (line,) = graph_check.mismatches(torch.device("cpu"), run=stale_loss, cases={"mann": None})
    assert line.startswith("mann: update 2 loss differs"), line
    assert graph_check.off_models(["resnet_conv: x differs", "gated_rnn: y differs", "dnc: z differs"],
                                  {**graph_check.CASES, **graph_check.BASELINE_CASES}) == ["ebmm", "dnc"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(graph_check, "mismatches", lambda *args, **kwargs: ["dnc: update 1 loss differs (...)"])
    assert graph_check.main(["mann", "dnc"]) == 1
    assert capsys.readouterr().out.splitlines() == ["graph check: dnc: update 1 loss differs (...)",
                                                    "graphs off for: dnc"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_named_in_membench_cuda_graphs_off_update_eagerly(monkeypatch):
    """MEMBENCH_CUDA_GRAPHS_OFF (set by the sessions for the models whose graph check differed) turns graphs off
    for the models it names alone."""
    from membench.registry import resolve_model

    monkeypatch.setenv("MEMBENCH_CUDA_GRAPHS_OFF", "ebmm dnc")
    config, device = TrainConfig(lr=1e-3, cuda_graph=True), torch.device("cuda")
    for name, on in (("dnc", False), ("mann", True)):
        model = resolve_model(name).from_spec(TaskSpec((128,), 8, True), TABLE1_BUDGET, "gpu").to(device)
        assert Stepper(model, config, device).graphs_on is on, name


def test_the_graph_check_checks_the_cases_a_session_names(capsys, monkeypatch):
    """A session checks what it trains: no names, EBMM's cases; --baselines, the baselines'; names, those
    cases in that order; an unknown name, or --baselines beside names, one line, exit 3, nothing run. Every
    model the Makefile's GPU sessions train as baselines (BASELINES_GPU) has a case."""
    from membench import graph_check

    assert list(graph_check.chosen_cases([])) == list(graph_check.CASES)
    assert list(graph_check.chosen_cases(["--baselines"])) == list(graph_check.BASELINE_CASES)
    assert list(graph_check.chosen_cases(["gated_rnn", "mann", "dnc"])) == ["gated_rnn", "mann", "dnc"]
    monkeypatch.setattr(graph_check, "mismatches", lambda *args, **kwargs: pytest.fail("a case ran"))
    for args, start in ((["gated_rnn", "mnn"], "graph check: unknown case mnn; give --baselines or case names among"),
                        (["--baselines", "mann"], "graph check: --baselines names the baselines' cases itself")):
        assert graph_check.main(args) == 3
        out = capsys.readouterr().out
        assert out.startswith(start) and out.count("\n") == 1, out
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    (line,) = [line for line in makefile.splitlines() if line.startswith("BASELINES_GPU ?=")]
    assert set(line.split("?=")[1].split()) <= set(graph_check.BASELINE_CASES)  # (the Kanerva machine's is done)
    (line,) = [line for line in makefile.splitlines() if line.startswith("FIG3_GRAPH_CASES =")]
    fig3_cases = graph_check.chosen_cases(line.split("=")[1].split())
    (training,) = [line for line in makefile.splitlines() if '--run "$(FIG3_GPU)' in line]
    trained = {"ebmm"} | set(re.findall(r"--model (\w+)", training))  # EBMM timed, the others trained
    assert trained == {model for _, model, _ in fig3_cases.values()}, "a Figure 3 session model has no graph case"
    assert {spec.pattern_shape for spec, model, _ in fig3_cases.values() if model != "ebmm"} == {(3, 16, 16)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_updates_equal_eager_ones_for_every_energy():
    """On CUDA: two graphs in one pool, replayed in turn, give the eager updates' weights (binary and image
    energies), and the graphs were captured."""
    from membench import graph_check

    assert graph_check.mismatches(torch.device("cuda")) == []
    assert graph_check.mismatches(torch.device("cuda"), cases=graph_check.BASELINE_CASES) == []
    assert graph_check.mismatches(torch.device("cuda"), cases=graph_check.IMAGE_BASELINE_CASES) == []


def test_a_reference_whose_benchmark_times_another_batch_is_refused(tmp_path):
    """Some commits' benchmark built 8 episodes an update: its time set beside 16-episode rows would halve their
    speed-up unnoticed. The tree's own `build` default decides: 16 passes, 8 is refused in one line."""
    from membench import throughput

    for batch in (16, 8):
        tree = tmp_path / f"tree{batch}"
        (tree / "tests" / "benchmarks").mkdir(parents=True)
        (tree / "tests" / "__init__.py").write_text("")
        (tree / "tests" / "benchmarks" / "test_bench_ebmm.py").write_text(
            f"def build(batch: int = {batch}, num_patterns: int = 64):\n    return None\n")
        if batch == 16:
            throughput.check_reference_batch(tree, "0123456789abcdef")
        else:
            with pytest.raises(MembenchError, match="the reference benchmark at 0123456789 times 8 episodes an update, "
                                                    "not the 16 episodes of the rows it is compared with"):
                throughput.check_reference_batch(tree, "0123456789abcdef")
    with pytest.raises(MembenchError, match=r"at 0123456789 has no build\(batch=...\) to tell its batch by"):
        throughput.check_reference_batch(tmp_path, "0123456789abcdef")  # no benchmark file at all
