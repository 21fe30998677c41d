"""The command line: outside models, clear errors, reports."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from membench.cli import main
from tests.conftest import REPO_ROOT, exited_cleanly, records_in, the_error_line


def readme_example(marker: str = "example-model") -> str:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert block, f"README must contain the example model between <!-- {marker} --> markers"
    return block.group(1)


def test_readme_example_is_short_and_runs_through_the_console_script(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) < 30
    (tmp_path / "my_memory.py").write_text(code)
    command = [shutil.which("membench")] if shutil.which("membench") else [sys.executable, "-m", "membench.cli"]
    result = subprocess.run([*command, "run", "--model", "my_memory:OneStepHebb", "--num-patterns", "16,32",
                             "--queries", "64", "--out", "out", "--no-progress"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "my_memory:OneStepHebb" in result.stdout  # the table has its row
    done = [line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("run ")]
    assert done == ["run 1 of at most 2 done", "run 2 of at most 2 done"]  # without bars, a line a run, on stderr
    assert "mean error" in result.stderr and "of at most" not in result.stdout
    records = records_in(tmp_path / "out")
    assert sorted(r["task"]["num_patterns"] for r in records) == [16, 32]
    assert all(r["memory_floats"] == 8256 for r in records)
    assert (tmp_path / "out" / "table1.md").exists()


def test_unknown_model_lists_valid_ones(tmp_path):
    result = CliRunner().invoke(main, ["run", "--model", "hopfield_heb", "--out", str(tmp_path)])
    assert result.exit_code == 1
    line = the_error_line(result)
    assert "unknown model 'hopfield_heb'" in line and "hopfield_hebb" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, said", [
    (["throughput", "--num-patterns", "0"], "Invalid value for '--num-patterns': 0 is out of range"),
    (["run", "--queries", "0"], "Invalid value for '--queries'"),
    (["run", "--no-such-option"], "No such option '--no-such-option'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["--bogus"], "No such option '--bogus'"),                      # the group's own options
])
def test_a_usage_error_is_one_line_naming_the_help(args, said):
    """Click printed its usage block and a hint above the error: three lines for one mistake. A bare `membench`
    still shows the help, not as an error."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    line = the_error_line(result)
    assert said in line and line.endswith("--help`)") and "Usage:" not in result.output
    bare = CliRunner().invoke(main, [])
    assert bare.output.startswith("Usage: ") and "Error" not in bare.output and "run " in bare.output


def test_unknown_suite_and_bad_seeds(tmp_path):
    result = CliRunner().invoke(main, ["run", "--suite", "table9", "--out", str(tmp_path)])
    line = the_error_line(result)
    assert result.exit_code == 1 and "unknown suite 'table9'" in line and "table1" in line
    result = CliRunner().invoke(main, ["run", "--seeds", "0,x", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "comma-separated integers" in the_error_line(result)
    assert not (tmp_path / "runs").exists()


def test_missing_module_names_the_problem(tmp_path):
    result = CliRunner().invoke(main, ["run", "--model", "no_such_module:Thing", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "cannot import module 'no_such_module'" in the_error_line(result)


def test_over_budget_is_refused_with_count_and_budget(tmp_path):
    result = CliRunner().invoke(main, ["run", "--model", "hopfield_hebb", "--budget", "100", "--num-patterns", "16",
                                       "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1
    line = the_error_line(result)
    assert "hopfield_hebb" in line and "8256" in line and "budget of 100" in line
    assert not list((tmp_path / "runs").glob("*.json")) if (tmp_path / "runs").exists() else True


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "no CUDA device" in the_error_line(result)
    assert not (tmp_path / "runs").exists()


def test_bad_input_in_a_real_process_is_one_line_on_stderr_and_no_traceback(tmp_path):
    """Through the interpreter, as a user runs it: an unknown model, and a report over a damaged record, each
    exit 1 with one error line, last on stderr (naming the problem and the fix; a library's import-time warning
    may come before it), no traceback and nothing on stdout; the damaged record is left as it was."""
    def membench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "membench.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    unknown = membench("run", "--model", "hopfield_heb", "--out", "out")
    (tmp_path / "out" / "runs").mkdir(parents=True)
    damaged = tmp_path / "out" / "runs" / "table1-raw_slots-N16-s0-x.json"
    damaged.write_text('{"run_id": "table1-raw_slots-N16-s0-x", "errors": [0.0')
    report = membench("report", "--out", "out")
    for result, fragments in ((unknown, ("unknown model 'hopfield_heb'", "hopfield_hebb")),
                              (report, (str(Path("out") / "runs" / damaged.name), "unreadable", "restore it from git"))):
        lines = result.stderr.splitlines()
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert lines[-1].startswith("Error: ") and sum(line.startswith("Error") for line in lines) == 1, lines
        assert "Traceback" not in result.stderr and all(fragment in lines[-1] for fragment in fragments), lines
    assert damaged.read_text() == '{"run_id": "table1-raw_slots-N16-s0-x", "errors": [0.0'


def test_report_without_runs_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "membench run --out" in the_error_line(result)
    assert list(tmp_path.iterdir()) == []  # no table written


def test_run_then_report_puts_paper_value_beside_ours(tmp_path):
    result = CliRunner().invoke(main, ["run", "--model", "hopfield_pseudoinverse", "--num-patterns", "16",
                                       "--queries", "32", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(main, ["report", "--out", str(tmp_path)])
    assert report.exit_code == 0
    row = next(line for line in report.output.splitlines() if line.startswith("| hopfield_pseudoinverse"))
    assert "0.00 ± 0.00 (0)" in row  # ours, then the paper's 0.0 in parentheses
    for name in ("table1.md", "table1.csv", "table1.tex"):
        assert (tmp_path / name).exists()


def test_list_shows_models_and_suites():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for name in ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse", "raw_slots", "table1"):
        assert name in result.output
    assert re.search(r"ebmm +learned ", result.output) and re.search(r"hopfield_hebb +untrained ", result.output)


def test_list_shows_a_suites_runs_as_run_makes_them(monkeypatch):
    """`list --suite`: one row per run `membench run --suite` makes for seed 0 under --preset (a Figure 3 curve's
    points with their memory sizes and options); an unknown suite, both --model and --suite, or missing data:
    one line."""
    from membench.datasets import set_data_dir
    from membench.suites import get_suite
    from tests.conftest import shared_path

    data_root = shared_path("data", "omniglot").parent  # 64 test images an episode: more than the fixture's
    from membench import datasets
    monkeypatch.setattr(datasets, "_data_dir_override", None)  # what --data-dir sets here is undone after the test
    result = CliRunner().invoke(main, ["list", "--suite", "fig3-omniglot", "--preset", "gpu", "--data-dir",
                                       str(data_root)])
    assert result.exit_code == 0, result.output
    set_data_dir(data_root)
    specs = get_suite("fig3-omniglot").expand("fig3-omniglot", None, (0,), 64, "gpu")
    assert f"{len(specs)} run(s) a seed under preset gpu, 64000 queries each" in result.output
    assert re.search(r"\| ebmm +\| EBMM_conv +\| gpu +\| omniglot +\| +64 \| +2308 \| image_size=32 block=16 \| "
                     r"energy=resnet_conv memory_size=2 ", result.output), result.output
    assert re.search(r"\| raw_slots +\| raw_slots +\| quick +\|", result.output)  # untrained: quick, as `run` makes it
    table1 = CliRunner().invoke(main, ["list", "--suite", "table1"])
    assert table1.exit_code == 0
    assert re.search(r"\| hopfield_hebb +\| quick +\| binary +\| +96 \| +8256 \|", table1.output), table1.output
    assert "curve" not in table1.output  # a suite without curves has no such column
    for args, line in ((["--suite", "nope"], "unknown suite 'nope'"), (["--suite", "table1", "--model", "ebmm"],
                       "give --model or --suite, not both"), (["--suite", "table1", "--preset", "foo"],
                       "no model of this run has a preset 'foo'"), (["--suite", "table1", "--model", "ebmm"],
                       "give --model or --suite, not both"), (["--preset", "gpu"], "give --suite SUITE with it"),
                       (["--suite", "fig3-cifar", "--data-dir", "/nonexistent"], "CIFAR-10 not found")):
        failed = CliRunner().invoke(main, ["list", *args])
        assert failed.exit_code == 1 and exited_cleanly(failed) and line in the_error_line(failed), failed.output


def test_list_shows_a_models_options_as_run_takes_them(tmp_path):
    """A learned model's preset values per preset (train.FIELD too), an untrained one's defaults; each one a value
    `membench run --option` accepts as it is written."""
    from membench.cli_common import parse_options
    from membench.interface import resolve_preset
    from membench.registry import make_task, resolve_model

    learned = CliRunner().invoke(main, ["list", "--model", "ebmm"])
    assert learned.exit_code == 0, learned.output
    assert re.search(r"\| hidden +\| 128 +\| 512 +\| 1024 +\|", learned.output)
    rows = {}  # option -> its quick value, as shown
    for line in learned.output.splitlines()[3:]:  # | option | quick | gpu | paper |
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    shown = {key: rows[key] for key in ("energy", "hidden", "write_norm_power", "train.num_patterns", "train.lr")}
    assert shown["train.num_patterns"] == "[16, 32, 48, 64, 96]" and shown["write_norm_power"] == "null"
    options = parse_options(None, None, tuple(f"{key}={value}" for key, value in shown.items()))
    spec = make_task({"kind": "binary", "dim": 128, "erased": 64, "num_patterns": 64}).spec
    ebmm = resolve_model("ebmm")
    assert resolve_preset(ebmm, spec, "quick", options) == ebmm.presets(spec, {})["quick"]  # as written: the same
    untrained = CliRunner().invoke(main, ["list", "--model", "modern_hopfield"])
    assert untrained.exit_code == 0 and re.search(r"\| beta +\| 1.0 +\|", untrained.output), untrained.output
    run = CliRunner().invoke(main, ["run", "--model", "modern_hopfield", "--option", "beta=1.0", "--num-patterns", "16",
                                    "--queries", "16", "--out", str(tmp_path), "--no-progress"])
    assert run.exit_code == 0, run.output
    unknown = CliRunner().invoke(main, ["list", "--model", "nope"])
    assert unknown.exit_code == 1 and "unknown model 'nope'" in unknown.output and exited_cleanly(unknown)


def test_entry_point_models_are_listed_and_one_named_like_a_built_in_is_said_to_be_shadowed(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    from membench import registry

    points = [EntryPoint("my_hebb", "baselines.hopfield:HebbHopfield", registry.ENTRY_POINT_GROUP),
              EntryPoint("raw_slots", "my_package.slots:Slots", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    monkeypatch.setattr(registry, "_SHADOWED_WARNED", set())
    known = registry.available_models()
    assert known["my_hebb"] == "baselines.hopfield:HebbHopfield"
    assert known["raw_slots"] == "baselines.raw_slots:RawSlotMemory"
    assert registry.resolve_model("my_hebb").__name__ == "HebbHopfield"
    registry.available_models()
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == ["Warning: the entry point 'raw_slots' (my_package.slots:Slots) of group membench.models is "
                        "shadowed by the built-in model of that name: rename it, or run it as --model "
                        "my_package.slots:Slots"]  # once a process


def test_option_reaches_the_model_and_names_its_runs(tmp_path, monkeypatch):
    """--option KEY=VALUE sets a model option in every run (record and run id); an unknown key is one line."""
    args = ["run", "--model", "modern_hopfield", "--num-patterns", "16", "--queries", "32", "--out", str(tmp_path),
            "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, args + ["--option", "beta=0.05", "--option", "steps=2"])
    assert result.exit_code == 0, result.output
    records = records_in(tmp_path)
    assert sorted(json.dumps(r["options"], sort_keys=True) for r in records) == ['{"beta": 0.05, "steps": 2}', "{}"]
    assert len({r["run_id"] for r in records}) == 2
    bad = CliRunner().invoke(main, args + ["--option", "betta=1"])
    assert bad.exit_code == 1 and "unexpected keyword argument 'betta'" in bad.output and exited_cleanly(bad)
    malformed = CliRunner().invoke(main, args + ["--option", "beta"])
    assert malformed.exit_code == 2 and "expected KEY=VALUE" in malformed.output
    twice = CliRunner().invoke(main, args + ["--option", "beta=1", "--option", " beta=2"])
    assert twice.exit_code == 2 and "'beta' is given twice" in twice.output
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2  # nothing run
    suite = CliRunner().invoke(main, ["run", "--option", "max_sweeps=5", "--out", str(tmp_path / "s")])
    assert suite.exit_code == 1 and "--option applies to every model of the run" in suite.output, suite.output
    (tmp_path / "typos.py").write_text(
        "import torch\nfrom baselines.hopfield import HebbHopfield\n\n\nclass Typo(HebbHopfield):\n"
        "    def __init__(self, spec, **options):\n        torch.zeros(2, dtyp=torch.float32)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    own = CliRunner().invoke(main, ["run", "--model", "typos:Typo", "--model", "hopfield_hebb", "--out",
                                    str(tmp_path / "t")])  # the model's own TypeError, no option given
    assert own.exit_code == 1 and "typos.py, line 7" in own.output and exited_cleanly(own), own.output
    assert "applies to every model" not in own.output
    learned = CliRunner().invoke(main, ["run", "--suite", "table1-learned", "--model", "ebmm", "--model", "lstm",
                                        "--option", "write_steps=2", "--out", str(tmp_path / "s")])
    assert learned.exit_code == 1 and "model 'lstm' has no option 'write_steps'" in learned.output, learned.output
    assert "--option applies to every model of the run" in learned.output and exited_cleanly(learned)
    value = CliRunner().invoke(main, ["run", "--model", "dense_associative_memory", "--model", "hopfield_hebb",
                                      "--option", "degree=200", "--out", str(tmp_path / "s")])
    assert value.exit_code == 1 and "degree=200 overflows" in value.output, value.output
    assert "applies to every model" not in value.output  # a value the model refuses, not a key it lacks


def test_train_options_set_the_training_config_and_split_checkpoints_by_n():
    """train.FIELD options reach the TrainConfig; train.num_patterns=None trains (and keys) one model per N."""
    from ebmm.memory import EBMM
    from membench.budget import TABLE1_BUDGET
    from membench.errors import MembenchError
    from membench.interface import resolve_preset
    from membench.run_identity import checkpoint_key
    from membench.build import build_model
    from membench.run_spec import RunSpec
    from membench.tasks import BinaryTask

    options = {"train.num_patterns": None, "train.steps": 7, "hidden": 96}
    preset = resolve_preset(EBMM, BinaryTask(16).spec, "quick", options)
    assert (preset.train.steps, preset.train.num_patterns, preset.model.hidden) == (7, None, 96)
    keys = set()
    for n, opts in ((16, options), (32, options), (16, {}), (32, {})):
        task = BinaryTask(n)
        spec = RunSpec("table1-learned", "ebmm", task.config(), TABLE1_BUDGET, 0, n, "quick", opts)
        keys.add(checkpoint_key(spec, build_model(spec, task), task))
    assert len(keys) == 3  # per N with the option, one shared key for the mixed-N preset
    with pytest.raises(MembenchError, match="no option 'train.stepz'.*train.steps"):
        resolve_preset(EBMM, BinaryTask(16).spec, "quick", {"train.stepz": 1})


def test_readme_sized_example_takes_the_budget_and_its_options_on_both_tasks(tmp_path, monkeypatch, data_root):
    """The README's budget-sized example: as many slots as the budget holds (64 at 8256 floats, every pattern at
    N = 16 stored: no wrong bit), `--option slots=4` winning over the budget's, and a Figure 3 curve whose points
    hold three and eight images (3072 and 8192 floats of 32x32)."""
    code = readme_example("example-sized-model")
    assert len(code.strip().splitlines()) <= 32
    (tmp_path / "sized_memory.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    small = ["run", "--model", "sized_memory:NearestSlots", "--num-patterns", "16", "--queries", "64", "--no-progress"]
    for options, out in (([], "whole"), (["--option", "slots=4"], "four")):
        result = CliRunner().invoke(main, [*small, *options, "--out", out])
        assert result.exit_code == 0, result.output
    (whole,), (four,) = records_in(tmp_path / "whole"), records_in(tmp_path / "four")
    assert whole["model_config"] == {"slots": 64} and whole["memory_floats"] == 16 * 128 and whole["mean_error"] == 0
    assert four["model_config"] == {"slots": 4} and four["memory_floats"] == 4 * 128 and four["mean_error"] > 0
    for bad in ("0", "2.5"):  # refused by the example's own check, in one line, before any run
        refused = CliRunner().invoke(main, [*small, "--option", f"slots={bad}", "--out", "bad"])
        assert refused.exit_code != 0 and exited_cleanly(refused), refused.output
        assert f"slots={bad}" in refused.output and not (tmp_path / "bad" / "runs").exists(), refused.output
    listed = CliRunner().invoke(main, ["list", "--model", "sized_memory:NearestSlots"])  # the 64 a run uses, beside 16
    assert listed.exit_code == 0 and re.search(r"\| slots +\| 16 +\| 64 +\|", listed.output), listed.output
    result = CliRunner().invoke(main, ["run", "--suite", "fig3-omniglot", "--model", "sized_memory:NearestSlots",
                                       "--num-patterns", "8", "--queries", "64", "--data-dir", str(data_root),
                                       "--out", "images", "--no-progress"])
    assert result.exit_code == 0, result.output
    points = sorted((r["budget"], r["model_config"]["slots"], r["memory_floats"]) for r in records_in(tmp_path / "images"))
    assert points == [(3072, 3, 3072), (8192, 8, 8192)]


def test_list_shows_the_options_of_a_sized_model_that_cannot_take_table1s_task(tmp_path, monkeypatch):
    """A model of images only, sized by its from_spec, raises its own error on the binary task: `list` still shows
    its options, without the column of what from_spec sets at Table 1's budget."""
    (tmp_path / "images_only.py").write_text(
        "from membench import AssociativeMemory\n\n\n"
        "class Blocks(AssociativeMemory):\n"
        "    def __init__(self, spec, width: int = 4):\n"
        "        super().__init__()\n"
        "        self.channels, self.height, self.width = spec.pattern_shape\n\n"
        "    @classmethod\n"
        "    def from_spec(cls, spec, budget, preset='quick', **options):\n"
        "        return cls(spec, **options)\n\n"
        "    def memory_floats(self, spec):\n        return 0\n\n"
        "    def write(self, patterns):\n        return patterns[:, :0].clone()\n\n"
        "    def read(self, state, queries):\n        return queries.clone()\n")
    monkeypatch.chdir(tmp_path)
    listed = CliRunner().invoke(main, ["list", "--model", "images_only:Blocks"])
    assert listed.exit_code == 0 and re.search(r"\| width +\| 4 +\|$", listed.output, re.M), listed.output
    assert "from_spec at" not in listed.output


def test_figures_draw_a_model_of_yours_only_as_its_record_was_made(tmp_path, monkeypatch, data_root):
    """The grid of a model from outside membench is drawn with the code that made its record: after an edit it is
    skipped, with the reason; a read that fails while drawing is one line naming its line and --no-grids."""
    code = readme_example("example-sized-model") + (
        "\n\nclass Flaky(NearestSlots):\n    def read(self, state, queries):\n        import os\n"
        "        if os.environ.get('FLAKY'):\n            raise KeyError('flaky read')\n"
        "        return super().read(state, queries)\n")
    (tmp_path / "flaky_memory.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    args = ["--data-dir", str(data_root), "--out", "images"]
    result = CliRunner().invoke(main, ["run", "--suite", "fig3-omniglot", "--model", "flaky_memory:Flaky",
                                       "--num-patterns", "8", "--queries", "16", "--budget", "3072", *args,
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    drawn = CliRunner().invoke(main, ["figures", *args])
    assert drawn.exit_code == 0 and (tmp_path / "images" / "fig3_recon_omniglot_flaky_memory_Flaky.png").exists()
    monkeypatch.setenv("FLAKY", "1")
    failed = CliRunner().invoke(main, ["figures", *args])
    assert failed.exit_code == 1 and exited_cleanly(failed), failed.output
    assert "KeyError" in failed.output and "flaky_memory.py" in failed.output and "--no-grids" in failed.output
    (tmp_path / "flaky_memory.py").write_text(code + "\n# edited\n")
    skipped = CliRunner().invoke(main, ["figures", *args])
    assert skipped.exit_code == 0, skipped.output
    assert "the source of flaky_memory:Flaky has changed since its record was made" in skipped.output


def test_readme_learned_example_trains_and_runs(tmp_path, monkeypatch):
    """The README's meta-learned example, on the example it extends: trained (a few updates here), then
    evaluated with the same budget; its options are its config's and TrainConfig's fields (`gain_init=2`, as
    the README writes it, is the float 2.0)."""
    (tmp_path / "my_memory.py").write_text(readme_example())
    (tmp_path / "learned_memory.py").write_text(readme_example("example-learned-model"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "--model", "learned_memory:LearnedGainHebb", "--num-patterns", "16",
                                       "--queries", "64", "--out", "out", "--no-progress", "--checkpoint-dir", "ck",
                                       "--option", "train.steps=5", "--option", "gain_init=2"])
    assert result.exit_code == 0, result.output
    (record,) = records_in(tmp_path / "out")
    assert record["training"]["steps"] == 5 and record["memory_floats"] == 8256
    assert record["preset_config"]["model"] == {"gain_init": 2.0} and record["options"]["gain_init"] == 2.0
    assert record["training"]["trained_by_this_run"]["steps"] == 5 and "; meta-training in this call: " in result.output
    same = CliRunner().invoke(main, ["run", "--model", "learned_memory:LearnedGainHebb", "--num-patterns", "16",
                                     "--queries", "64", "--out", "out", "--no-progress", "--checkpoint-dir", "ck",
                                     "--option", "train.steps=5", "--option", "gain_init=2.0"])
    assert same.exit_code == 0 and "0 run(s) executed, 1 already finished" in same.output, same.output
    again = CliRunner().invoke(main, ["run", "--model", "learned_memory:LearnedGainHebb", "--num-patterns", "16",
                                      "--queries", "64", "--out", "out", "--no-progress", "--checkpoint-dir", "ck",
                                      "--option", "train.steps=5", "--option", "gain_init=2", "--force"])
    assert again.exit_code == 0 and "no meta-training in this call (every checkpoint was trained already)" in again.output
    (redone,) = records_in(tmp_path / "out")
    assert redone["training"]["trained_by_this_run"] == {"steps": 0, "train_time_s": 0.0}
    assert redone["training"]["train_time_s"] > 0


def test_a_registered_model_given_as_module_and_class_runs_under_its_name(tmp_path):
    """`--model baselines.hopfield:HebbHopfield` beside `--model hopfield_hebb` is one model: one run id per cell
    (one record, and for a learned model one checkpoint), under the registered name, and said so."""
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", "--suite", "table1", "--model", "baselines.hopfield:HebbHopfield",
                                       "--model", "hopfield_hebb", "--num-patterns", "16", "--queries", "64",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "baselines.hopfield:HebbHopfield is the registered model 'hopfield_hebb'" in result.output
    assert [record["model"] for record in records_in(out)] == ["hopfield_hebb"]
