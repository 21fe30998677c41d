"""Reports are keyed by what defines a cell: tasks and budgets never pool, duplicates count once."""
from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from membench.cli import main
from membench.report import table1
from membench.runner import run_all
from membench.store import ResultsStore
from membench.suites import get_suite
from tests.conftest import REPO_ROOT, exited_cleanly
from tests.test_datasets import write_fixture_data


def _row(markdown: str, label: str, section: int = 0) -> list[str]:
    table = markdown.split("## ")[1 + section]
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _binary(tmp_path, num_patterns=(64, 96), queries=64, budget=None, seeds=(0,)):
    specs = get_suite("table1").expand("table1", ("raw_slots",), seeds, queries, "quick", num_patterns, budget)
    return run_all(specs, tmp_path, device="cpu", progress=False)


def test_binary_and_image_runs_of_one_model_do_not_pool(tmp_path, monkeypatch):
    _binary(tmp_path)
    root = write_fixture_data(tmp_path / "data")
    monkeypatch.setenv("MEMBENCH_DATA", str(root))
    result = CliRunner().invoke(main, ["run", "--suite", "fig3-omniglot", "--model", "raw_slots", "--num-patterns", "4",
                                       "--queries", "8", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    markdown = table1(tmp_path)
    assert _row(markdown, "raw_slots")[1] == "0.00 ± n/a"  # N = 64: all 64 patterns kept (one episode: no interval)
    assert "image-task run(s) are summarised by `membench figures`" in markdown


def test_two_budgets_make_two_tables(tmp_path):
    _binary(tmp_path)
    _binary(tmp_path, budget=4096)   # 32 slots: N = 64 and 96 lose patterns
    markdown = table1(tmp_path)
    assert markdown.count("## ") == 2
    assert "budget 8256 float32" in markdown and "budget 4096 float32" in markdown
    full = _row(markdown, "raw_slots", section=[s.startswith("Table 1") for s in markdown.split("## ")[1:]].index(True))
    assert full[1].startswith("0.00")
    assert not full[2].startswith("0.00")  # N = 96 at 8256 floats: 64 of 96 patterns kept
    _binary(tmp_path, budget=16384)
    _binary(tmp_path, budget=2048)
    budgets = [int(b) for b in re.findall(r"budget (\d+) float32", table1(tmp_path))]
    assert budgets == [8256, 2048, 4096, 16384]  # Table 1's own first, then by budget as a number


def test_copies_and_reruns_with_more_queries_count_once(tmp_path):
    (record,) = _binary(tmp_path, num_patterns=(96,))
    runs = ResultsStore(tmp_path).runs_dir
    shutil.copy(runs / f"{record['run_id']}.json", runs / f"{record['run_id']} (copy).json")
    (bigger,) = _binary(tmp_path, num_patterns=(96,), queries=192)  # same seed: the first 96 queries again
    markdown = table1(tmp_path)
    assert "2 record(s) repeat the episodes of another record" in markdown
    assert f"Queries per cell: {len(bigger['errors'])};" in markdown


def test_the_provenance_says_which_cells_pool_which_seeds(tmp_path):
    _binary(tmp_path, num_patterns=(16, 32, 64), seeds=(0, 1))
    specs = get_suite("table1").expand("table1", ("hopfield_hebb",), (0,), 64, "quick", (16,))
    run_all(specs, tmp_path, device="cpu", progress=False)
    assert "seeds: 0 1 in 3 cells, 0 in 1 cell;" in table1(tmp_path)


def test_rows_show_device_and_torch_where_they_differ(tmp_path):
    _binary(tmp_path, num_patterns=(16,))
    specs = get_suite("table1").expand("table1", ("hopfield_hebb",), (0,), 64, "quick", (16,))
    (record,) = run_all(specs, tmp_path, device="cpu", progress=False)
    record["environment"]["torch"] = "0.0-other"
    ResultsStore(tmp_path).save(record)
    markdown = table1(tmp_path)
    assert "device · torch" in markdown and "cpu · torch 0.0-other" in _row(markdown, "hopfield_hebb")[-1]


def test_records_hold_commit_and_dirty_flag(tmp_path, monkeypatch):
    """The commit and whether the tree was dirty are what provenance says (here: set as on a lent machine)."""
    from membench.provenance import git_state

    monkeypatch.setenv("MEMBENCH_GIT_COMMIT", "0123abcd")
    monkeypatch.setenv("MEMBENCH_GIT_DIRTY", "1")
    git_state.cache_clear()  # read once per process
    try:
        (record,) = _binary(tmp_path, num_patterns=(16,))
    finally:
        git_state.cache_clear()
    assert (record["environment"]["git_commit"], record["environment"]["git_dirty"]) == ("0123abcd", True)
    assert ResultsStore(tmp_path).records()[0]["environment"]["git_dirty"] is True  # as stored, not only returned


def test_readme_tables_match_the_committed_records():
    result = CliRunner().invoke(main, ["readme", "--check", "--results", str(REPO_ROOT / "results"),
                                       "--file", str(REPO_ROOT / "README.md")])
    assert result.exit_code == 0, result.output


def test_a_stale_readme_table_fails_the_check_and_is_rewritten_without_it(tmp_path):
    """`readme --check` exits 1 naming the stale table and changes nothing; `readme` then rewrites that table
    from the records, leaving the prose around it as it was."""
    readme = tmp_path / "README.md"
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    stale = text.replace("| hopfield_hebb ", "| hopfield_hebb_renamed ", 1)
    assert stale != text
    readme.write_text(stale, encoding="utf-8")
    args = ["readme", "--results", str(REPO_ROOT / "results"), "--file", str(readme)]
    check = CliRunner().invoke(main, [*args, "--check"])
    assert check.exit_code == 1 and "the tables table1 differ from the records" in check.output, check.output
    assert readme.read_text(encoding="utf-8") == stale
    rewrite = CliRunner().invoke(main, args)
    assert rewrite.exit_code == 0 and "rewrote table1" in rewrite.output, rewrite.output
    assert readme.read_text(encoding="utf-8") == text


def test_a_readme_with_a_block_twice_is_refused(tmp_path):
    """Only the first would be rewritten: the second, stale, would pass --check."""
    readme = tmp_path / "README.md"
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("<!-- results:table1 -->"):text.index("<!-- /results:table1 -->") + 24]
    readme.write_text(text + "\n" + block + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["readme", "--check", "--results", str(REPO_ROOT / "results"), "--file",
                                       str(readme)])
    assert result.exit_code == 1 and "more than one <!-- results:table1 --> block" in result.output


def test_a_readme_that_is_not_utf8_text_is_named(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(b"\xff\xfe binary")
    result = CliRunner().invoke(main, ["readme", "--check", "--results", str(REPO_ROOT / "results"), "--file",
                                       str(readme)])
    assert result.exit_code == 1 and "is not readable UTF-8 text (UnicodeDecodeError)" in result.output
    assert exited_cleanly(result)


def test_provenance_names_the_devices_and_commits_that_trained_each_checkpoint():
    """A checkpoint trained on a GPU and continued on a CPU is listed under both; one without a history
    is counted, not guessed."""
    from membench.report import trained_on

    def record(key: str, history):
        return {"training": {"checkpoint_key": key, "train_time_s": 1.0, "history": history}}

    gpu = {"steps": [0, 100], "device": "cuda", "device_name": "NVIDIA H100", "commit": "a" * 40, "dirty": False}
    cpu = {"steps": [100, 150], "device": "cpu", "device_name": "x86_64", "commit": "b" * 40, "dirty": True}
    text = trained_on([record("k1", [gpu, cpu]), record("k1", [gpu, cpu]), record("k2", None)])
    assert text == ("NVIDIA H100 (cuda) at aaaaaaaaaa; x86_64 (cpu) at bbbbbbbbbb (dirty); "
                    "1 checkpoint without a training history")


def test_the_interval_is_over_episodes_not_queries():
    """Two episodes of N = 4 whose queries agree inside each episode: the queries look like 8 independent
    draws, but there are two memories, so the interval is the t-interval of two episode means."""
    from membench.report import summarise

    record = {"run_id": "r", "suite": "table1", "model": "raw_slots", "options": {}, "seed": 0, "preset": "quick",
              "task": {"kind": "binary", "num_patterns": 4, "dim": 128, "erased": 64}, "budget": 8256,
              "memory_floats": 512, "errors": [0.0] * 4 + [2.0] * 4, "training": None, "wall_time_s": 1.0,
              "environment": {"device": "cpu", "torch": "2"}, "command": "membench run"}
    (row,) = summarise([record]).itertuples()
    assert row.mean == 1.0 and row.num_queries == 8
    # episode means 0 and 2: standard error 1, one degree of freedom, t(0.975, 1) = 12.7062 (printed t tables);
    # an interval over the 8 queries would be about 1.8 wide
    assert (row.ci_low, row.ci_high) == pytest.approx((1.0 - 12.7062, 1.0 + 12.7062), abs=1e-4)


def test_a_record_without_a_dirty_flag_is_not_shown_as_clean():
    from membench.report import commits_text

    records = [{"environment": {"git_commit": "a" * 40, "git_dirty": False}},
               {"environment": {"git_commit": "b" * 40, "git_dirty": True}},
               {"environment": {"git_commit": "c" * 40}}]
    assert commits_text(records) == "aaaaaaaaaa, bbbbbbbbbb (dirty), cccccccccc (clean unknown)"


def test_each_row_says_the_floats_its_state_held(tmp_path):
    """Raw slots hold min(N, 64) whole patterns of 128 values: 2048 floats at N = 16 and 8192 at N = 96, shown
    as the row's range beside its cells."""
    from membench.report import table1

    _binary(tmp_path, num_patterns=(16, 96))
    markdown = table1(tmp_path, write=False)
    header = next(line for line in markdown.splitlines() if line.startswith("| model \\ N"))
    row = next(line for line in markdown.splitlines() if line.startswith("| raw_slots"))
    assert [c.strip() for c in header.split("|")][-2] == "floats used"
    assert [c.strip() for c in row.split("|")][-2] == "2048–8192"


def test_a_record_without_a_torch_version_is_reported(tmp_path):
    """Fields the record format never required are read with a default, not a KeyError."""
    import json

    (record,) = _binary(tmp_path, num_patterns=(16,))
    path = ResultsStore(tmp_path).record_path(record["run_id"])
    saved = json.loads(path.read_text())
    del saved["environment"]["torch"]
    path.write_text(json.dumps(saved))
    text = table1(tmp_path)
    assert "device · torch: cpu · torch unknown;" in text
    assert [[cell.strip() for cell in line.split("|")[1:4]] for line in text.splitlines()
            if line.startswith("| raw_slots")] == [["raw_slots", "0.00 ± 0.00", "2048"]]


def test_a_report_never_mixes_two_versions_of_a_models_source():
    """Only the model's latest record's source counts, in every cell: a cell the new version never ran is left
    out, not shown from the old version beside the new one's."""
    from membench.cells import distinct

    def record(n, seed, source, finished):
        return {"run_id": f"{n}-{seed}-{source}", "model": "mine:M", "task": {"kind": "binary", "num_patterns": n},
                "budget": 8256, "options": {}, "preset": "quick", "seed": seed, "model_source": source,
                "finished_at": finished, "errors": [0.0] * n, "num_queries": n}

    kept, _ = distinct([record(16, 0, "old", "2026-01-01"), record(16, 1, "new", "2026-01-02"),
                        record(32, 0, "old", "2026-01-01")])
    assert sorted((r["task"]["num_patterns"], r["model_source"]) for r in kept) == [(16, "new")]


def test_a_trained_row_says_how_many_updates_of_how_many_episodes_trained_it():
    """Compute beside the numbers (issue 14: baselines get at least EBMM's): updates × episodes per update of a
    learned row's checkpoint; an untrained row leaves the column empty, a table without learned rows has none."""
    from membench.report import grid, summarise

    def record(model: str, training: dict | None) -> dict:
        return {"run_id": model, "suite": "table1", "model": model, "options": {}, "seed": 0, "preset": "quick",
                "task": {"kind": "binary", "num_patterns": 4, "dim": 128, "erased": 64}, "budget": 8256,
                "memory_floats": 512, "errors": [0.0] * 8, "training": training, "wall_time_s": 1.0,
                "environment": {"device": "cpu", "torch": "2"}, "command": "membench run"}

    learned = {"checkpoint_key": "k", "train_time_s": 1.0, "steps": 30, "config": {"batch_size": 4}, "history": None}
    cells, headers = grid(summarise([record("raw_slots", None), record("mann", learned)]), None)
    column = headers.index("updates × episodes")
    assert {line[0]: line[column] for line in cells} == {"mann": "30 × 4", "raw_slots": ""}
    assert "updates × episodes" not in grid(summarise([record("raw_slots", None)]), None)[1]


def test_training_curves_put_errors_of_different_units_on_panels_of_their_own(tmp_path, monkeypatch):
    """Omniglot's wrong pixels and CIFAR's squared error shared one error axis: now the loss, then one error
    panel per task, each naming its unit, and one legend beside them."""
    import pandas as pd

    from membench import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    curve = pd.DataFrame({"step": [50.0, 100.0], "loss": [2.0, 1.0], "error": [40.0, 30.0]})
    plots.training_curves(tmp_path, {"a": ("MemNet (3072 floats, quick)", "omniglot, pixels", curve),
                                     "b": ("MemNet (3072 floats, quick)", "cifar10, squared error", curve),
                                     "c": ("MANN (2112 floats, quick)", "cifar10, squared error", curve)})
    loss, cifar, omniglot = drawn[0].axes
    legend = omniglot.get_legend()  # one line per label, its colour the same in both panels
    assert [t.get_text() for t in legend.get_texts()] == ["MANN (2112 floats, quick)", "MemNet (3072 floats, quick)"]

    def colours(ax):  # of the bold lines (the faint ones carry no label)
        return {line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert colours(cifar)["MemNet (3072 floats, quick)"] == colours(omniglot)["MemNet (3072 floats, quick)"]
    assert loss.get_yscale() == "log"
    plots.training_curves(tmp_path, {"a": ("mine", "binary, bits", curve.assign(loss=[0.5, -1.0]))})
    assert drawn[-1].axes[0].get_yscale() == "symlog"  # a loss at or below 0 is drawn, not dropped by a log axis
    assert drawn[-1].axes[0].yaxis.get_transform().linthresh == 0.5  # linear only within the smallest loss
    assert cifar.get_ylabel() == "error on the training batch (squared error)" and cifar.get_title().endswith("cifar10")
    assert omniglot.get_ylabel() == "error on the training batch (pixels)"
    assert len(cifar.get_lines()) == 4 and len(omniglot.get_lines()) == 2   # faint and bold, a curve each
    assert omniglot.get_legend() is not None and cifar.get_legend() is None


def test_training_curves_leave_out_a_models_older_source_version(tmp_path):
    """The curves figure follows the tables' rule: a model's run made by an older version of its source files
    (`model_source`) draws no curve beside the new version's."""
    from membench.plots import read_curves
    from membench.records import RECORD_KEYS
    from membench.store import ResultsStore

    store = ResultsStore(tmp_path)
    (tmp_path / "training").mkdir()
    for name, source, finished in (("old", "a", "2026-01-01"), ("new", "b", "2026-01-02")):
        (tmp_path / "training" / f"{name}.csv").write_text("step,loss,error\n1,0.5,3.0\n")
        store.save({**{key: 0 for key in RECORD_KEYS}, "queries": 16, "run_id": name, "suite": "table1",
                    "model": "mine:M", "task": {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 64}, "errors": [0.0] * 16,
                    "environment": {"device": "cpu"}, "options": {}, "preset": "quick", "command": "membench run",
                    "model_source": source, "finished_at": finished,
                    "training": {"checkpoint_key": name, "curve": f"training/{name}.csv", "train_time_s": 1.0,
                                 "config": {"num_patterns": [16]}}})
    assert list(read_curves(tmp_path)) == ["new"]


def test_a_cell_never_pools_two_versions_of_a_preset(capsys):
    """Seed 0 trained before the preset changed (another learning rate), seed 1 after: the cell keeps seed 1
    alone, with a warning, rather than pooling the two models (or keeping the one with more queries)."""
    from membench.cells import distinct

    def record(seed: int, lr: float, finished: str, queries: int) -> dict:
        return {"run_id": f"r{seed}", "suite": "table1", "model": "ebmm", "options": {}, "seed": seed,
                "preset": "quick", "task": {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 64},
                "budget": 8256, "errors": [0.0] * queries, "finished_at": finished,
                "preset_config": {"model": {"hidden": 128}, "train": {"steps": 10, "lr": lr}}}

    kept, _ = distinct([record(0, 1e-3, "2026-01-01", 3008), record(1, 6e-3, "2026-01-02", 1008)])
    assert [r["run_id"] for r in kept] == ["r1"]
    assert "1 record(s) of ebmm were made by an older version" in capsys.readouterr().err
    same = [record(0, 6e-3, "2026-01-01", 3008), record(1, 6e-3, "2026-01-02", 1008)]
    same[0]["preset_config"]["train"]["warmup_steps"] = 0  # a late field at its default: the same preset
    assert [r["run_id"] for r in distinct(same)[0]] == ["r0", "r1"]
