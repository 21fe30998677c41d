"""Bit-flip corruption of the binary task, the capacity suites (binary and image), and their figures and tables."""
from __future__ import annotations

import json
import re

import pytest
import torch

from membench.budget import TABLE1_BUDGET
from membench.capacity import capacity_figures, capacity_summary
from membench.capacity_plots import budget_notes
from membench.suites import (CAPACITY_BUDGETS, CAPACITY_MODELS, CAPACITY_NUM_PATTERNS, CAPACITY_SUITES,
                             FLIP_NUM_PATTERNS, FLIP_RATES, IMAGE_CORRUPTIONS, CapacitySuite, split_by_budget)
from membench.errors import MembenchError
from membench.registry import make_task
from membench.cells import task_key
from membench.runner import run_all
from membench.store import ResultsStore
from membench.tasks import BinaryTask, Episodes
from tests.conftest import REPO_ROOT, exited_cleanly

HOPFIELD = ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse")


@pytest.fixture
def one_thread():
    """One torch thread: the Hopfield read's many small ops slow down 20x or more when two threads
    compete with other processes for two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def erasure_sample_before_flips(task: BinaryTask, batch_size: int, generator: torch.Generator) -> Episodes:
    """BinaryTask.sample as it was before flips existed (a copy), to pin the erasure task's episodes."""
    shape = (batch_size, task.spec.num_patterns, task.dim)
    patterns = torch.randint(0, 2, shape, generator=generator).float()
    erase_order = torch.rand(shape, generator=generator).argsort(dim=-1)
    erased_mask = torch.zeros(shape, dtype=torch.bool).scatter_(-1, erase_order[..., : task.erased], True)
    queries = patterns.masked_fill(erased_mask, task.spec.fill_value)
    return Episodes(patterns, queries)


@pytest.mark.parametrize("flip, dim", [(0.1, 128), (0.2, 128), (0.3, 128), (0.5, 128), (0.25, 10), (0.1, 7)])
def test_flip_flips_exactly_round_flip_dim_bits_per_query(flip, dim):
    task = BinaryTask(num_patterns=9, dim=dim, erased=0, flip=flip)
    episodes = task.sample(5, torch.Generator().manual_seed(3))
    assert episodes.queries.shape == episodes.patterns.shape == (5, 9, dim)
    assert set(episodes.queries.unique().tolist()) <= {0.0, 1.0}            # nothing erased, all bits known
    differ = episodes.queries != episodes.patterns
    assert (differ.sum(-1) == round(flip * dim)).all()                      # exactly that many per query
    assert torch.equal(episodes.queries[differ], 1 - episodes.patterns[differ])  # those bits flipped, the rest equal
    # the error measure counts them as today: a model returning the query errs on exactly the flipped bits
    assert (task.errors(episodes.queries, episodes.patterns) == round(flip * dim)).all()
    # different queries flip different positions; the same generator state gives the same episodes
    assert not (differ == differ[:1, :1]).all()
    again = task.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(again.queries, episodes.queries) and torch.equal(again.patterns, episodes.patterns)


@pytest.mark.parametrize("num_patterns, dim, erased", [(16, 128, 64), (5, 12, 5), (7, 64, 0), (3, 32, 32)])
def test_erasure_sampling_unchanged_when_flip_is_zero(num_patterns, dim, erased):
    for flip in (0.0, 0):
        task = BinaryTask(num_patterns=num_patterns, dim=dim, erased=erased, flip=flip)
        new, old = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        for _ in range(3):  # successive batches: the generator advances the same way too
            ours, before = task.sample(4, new), erasure_sample_before_flips(task, 4, old)
            assert torch.equal(ours.patterns, before.patterns) and torch.equal(ours.queries, before.queries)
        assert torch.equal(new.get_state(), old.get_state())
        assert "flip" not in task.config()  # configs, so run ids, of erasure tasks are as before
        assert task.config() == {"kind": "binary", "num_patterns": num_patterns, "dim": dim, "erased": erased}


def test_flip_config_round_trips_and_survives_with_num_patterns():
    task = BinaryTask(num_patterns=16, erased=0, flip=0.2)
    assert task.config() == {"kind": "binary", "num_patterns": 16, "dim": 128, "erased": 0, "flip": 0.2}
    other = task.with_num_patterns(32)
    assert other.flip == 0.2 and other.config() == {**task.config(), "num_patterns": 32}
    assert make_task(json.loads(json.dumps(task.config()))).config() == task.config()


@pytest.mark.parametrize("kwargs", [
    {"erased": 0, "flip": -0.1}, {"erased": 0, "flip": 0.51}, {"erased": 0, "flip": 1.0},
    {"erased": 0, "flip": float("nan")}, {"erased": 0, "flip": True}, {"erased": 0, "flip": "0.1"},
    {"erased": 64, "flip": 0.1}, {"flip": 0.1},  # erased defaults to 64: flips and erasure together are refused
    {"erased": 1, "flip": 0.5},
])
def test_bad_flip_values_are_refused(kwargs):
    with pytest.raises(MembenchError, match="flip"):
        BinaryTask(num_patterns=8, **kwargs)


def test_suites_expand_to_their_grids():
    n = CAPACITY_SUITES["capacity-n"].expand("capacity-n", None, (0, 1), 1000, "quick")
    assert len(n) == len(CAPACITY_MODELS) * len(CAPACITY_NUM_PATTERNS) * 2 == 160
    assert {s.budget for s in n} == {TABLE1_BUDGET} and {s.model for s in n} == set(CAPACITY_MODELS)
    assert {json.dumps(s.task, sort_keys=True) for s in n} == {
        json.dumps({"kind": "binary", "num_patterns": k, "dim": 128, "erased": 64}, sort_keys=True)
        for k in CAPACITY_NUM_PATTERNS}

    budget = CAPACITY_SUITES["capacity-budget"].expand("capacity-budget", None, (0,), 1000, "quick")
    cells = {(s.model, s.budget) for s in budget}
    assert CAPACITY_BUDGETS == (2080, 4160, 8256, 16512, 33024)
    below = [b for b in CAPACITY_BUDGETS if b < TABLE1_BUDGET]
    # Hopfield networks (8256 floats at every budget) are left out where that exceeds the budget
    assert cells == {(m, b) for m in CAPACITY_MODELS for b in CAPACITY_BUDGETS if not (m in HOPFIELD and b in below)}
    assert len(budget) == len(CAPACITY_MODELS) * 5 - len(HOPFIELD) * len(below) == 34
    assert all(s.task == {"kind": "binary", "num_patterns": 64, "dim": 128, "erased": 64} for s in budget)
    fit, refused = split_by_budget(CAPACITY_SUITES["capacity-budget"].grid("capacity-budget", None, (0,), 1000,
                                                                           "quick"))
    assert len(fit) == 34 and {(s.model, s.budget, count) for s, count in refused} == {
        (m, b, TABLE1_BUDGET) for m in HOPFIELD for b in below}

    flip = CAPACITY_SUITES["capacity-flip"].expand("capacity-flip", None, (0,), 1000, "quick")
    assert len(flip) == len(CAPACITY_MODELS) * len(FLIP_NUM_PATTERNS) * len(FLIP_RATES) == 96
    assert {s.budget for s in flip} == {TABLE1_BUDGET}
    assert {(s.task["num_patterns"], s.task["flip"]) for s in flip} == {
        (k, f) for k in FLIP_NUM_PATTERNS for f in FLIP_RATES}
    assert all(s.task["erased"] == 0 and make_task(s.task).config() == s.task for s in flip)
    assert len({s.run_id for s in n + budget + flip}) == len(n + budget + flip)


def test_suite_overrides_and_refusals(capsys):
    suite = CAPACITY_SUITES["capacity-budget"]
    only = suite.expand("capacity-budget", ("raw_slots",), (0,), 10, "quick", num_patterns=(8,), budget=4160)
    assert [(s.model, s.budget, s.task["num_patterns"]) for s in only] == [("raw_slots", 4160, 8)]
    assert capsys.readouterr().err == ""
    named = suite.expand("capacity-budget", ("raw_slots", "hopfield_hebb"), (0,), 10, "quick", num_patterns=(8,),
                         budget=4160)  # a model named on the command line and left out is said so
    assert {s.model for s in named} == {"raw_slots"}
    assert "suite 'capacity-budget' leaves out: hopfield_hebb declares 8256 float32 values at budget 4160" in (
        capsys.readouterr().err)
    with pytest.raises(MembenchError, match="hopfield_hebb declares 8256"):
        suite.expand("capacity-budget", ("hopfield_hebb",), (0,), 10, "quick", budget=2080)
    with pytest.raises(MembenchError, match="erased=0"):
        CapacitySuite("bad", models=("raw_slots",), flips=(0.1,))  # erased defaults to 64


def test_capacity_figures_on_a_tiny_run(tmp_path, one_thread):
    models, sizes = ("raw_slots", "modern_hopfield"), (16, 96)
    specs = [s for name in ("capacity-n", "capacity-flip")
             for s in CAPACITY_SUITES[name].expand(name, models, (0,), 32, "quick", num_patterns=sizes)]
    specs += CAPACITY_SUITES["capacity-budget"].expand("capacity-budget", models + ("hopfield_hebb",), (0,), 32,
                                                       "quick", num_patterns=(64,))
    # run at Table 1's budget only, though it fits any: "not run" at the others, never "over budget"
    specs += CAPACITY_SUITES["capacity-n"].expand("capacity-n", ("sparse_distributed_memory", "hopfield_storkey"), (0,),
                                                  32, "quick", num_patterns=(64,))
    run_all(specs, tmp_path, device="cpu", progress=False, command="pytest")
    binary = ResultsStore(tmp_path).records()[0]  # a Figure 3 run beside them is `membench figures`': left alone
    ResultsStore(tmp_path).save({**binary, "suite": "fig3-omniglot", "run_id": "fig3-omniglot-a-copy",
                                 "task": {"kind": "omniglot", "num_patterns": 64, "image_size": 32, "block": 16}})
    paths = capacity_figures(tmp_path)
    names = {p.name for p in paths}
    assert names == {f"capacity_{kind}.{ext}" for kind in ("n", "budget", "flip") for ext in ("png", "pdf")} | {
        "capacity.md", "capacity.csv"}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    records = [r for r in ResultsStore(tmp_path).records() if r["task"]["kind"] == "binary"]
    tables = {task_key(r) for r in records}
    assert len(tables) == 1 + 3 + 5 - 1  # capacity-n's task; 3 flip rates; 5 budgets (8256 shared with capacity-n)
    markdown = (tmp_path / "capacity.md").read_text()
    assert markdown.count("| model \\ N ") == len(tables)      # one table per task and budget
    assert markdown.count("| model \\ budget ") == 1           # and the budget summary
    assert "13 of 128 bits flipped" in markdown and "budget 2080 float32 (16 whole patterns)" in markdown
    assert "Absent (state over this budget): hopfield_hebb (8256 floats)" in markdown
    summary = markdown.split("| model \\ budget ")[1]
    hebb = next(line for line in summary.splitlines() if line.startswith("| hopfield_hebb "))
    sdm = next(line for line in summary.splitlines() if line.startswith("| sparse_distributed_memory "))
    assert hebb.count("over budget") == 2 and "not run" not in hebb, hebb    # 8256 floats: the two smallest
    assert sdm.count("not run") == 4 and "over budget" not in sdm, sdm
    summary = capacity_summary(tmp_path)[0]  # the budget figure's note says the same
    at_64 = summary[(summary.flip == 0) & (summary.num_patterns == 64)]
    assert budget_notes(at_64) == ["over budget: hopfield_hebb (2080, 4160), hopfield_storkey (2080, 4160)",
                                   "run at 8256 only (a marker, spread sideways): hopfield_storkey, sparse_distributed_memory"]
    # under flips no bit is clamped: modern Hopfield brings the stored pattern back (13 flips of 128)
    flip_table = markdown.split("13 of 128 bits flipped")[1].split("## ")[0]
    assert re.search(r"\| modern_hopfield +\| 0\.00 ± 0\.00 +\|", flip_table), flip_table
    csv = (tmp_path / "capacity.csv").read_text().splitlines()
    assert csv[0].startswith("dim,erased,flip,budget,model") and len(csv) == 1 + len(
        {(task_key(r), r["model"], r["task"]["num_patterns"]) for r in records})


# --- image capacity suites ----------------------------------------------------------------

def test_image_suites_expand_without_the_models_that_refuse(data_root):
    corruptions = {json.dumps(c, sort_keys=True) for c in IMAGE_CORRUPTIONS}
    accepted = {"capacity-omniglot": ({"raw_slots", "modern_hopfield", "universal_hopfield", "dense_associative_memory",
                                       "sparse_distributed_memory", "passthrough", "mean_fill"}, 64 * 1024),
                "capacity-cifar": ({"raw_slots", "modern_hopfield", "universal_hopfield", "passthrough", "mean_fill"},
                                   64 * 3072)}
    all_specs = []
    for name, (models, budget) in accepted.items():
        specs = CAPACITY_SUITES[name].expand(name, None, (0, 1), 64, "quick", num_patterns=(8, 16))
        assert {s.model for s in specs} == models                          # Hopfield rules (and SDM, dense AM on
        # CIFAR-10) refuse the task: left out; mean_fill refuses the noise task alone (no erased pixel to find)
        assert len(specs) == (len(models) * len(IMAGE_CORRUPTIONS) - 1) * 2 * 2
        assert {s.task.get("noise", 0) for s in specs if s.model == "mean_fill"} == {0}
        assert {s.budget for s in specs} == {budget}                        # 64 whole images
        assert {json.dumps({k: v for k, v in s.task.items() if k in ("block", "mask", "noise")}, sort_keys=True)
                for s in specs} == corruptions
        assert all(make_task(s.task).config() == s.task for s in specs)
        all_specs += specs
    assert len({s.run_id for s in all_specs}) == len(all_specs)

    suite = CAPACITY_SUITES["capacity-omniglot"]
    # below one whole image only the 0-float references fit (raw slots, the Hopfield memories and SDM hold none)
    tiny = suite.expand("capacity-omniglot", None, (0,), 8, "quick", num_patterns=(4,), budget=1000)
    assert {(s.model, s.budget) for s in tiny} == {("passthrough", 1000), ("mean_fill", 1000)}
    with pytest.raises(MembenchError, match="sparse_distributed_memory refuses the task .*real-valued"):
        CAPACITY_SUITES["capacity-cifar"].expand("capacity-cifar", ("sparse_distributed_memory",), (0,), 8, "quick",
                                                 num_patterns=(4,))
    with pytest.raises(MembenchError, match="unknown model 'no_such_model'"):
        suite.expand("capacity-omniglot", ("raw_slots", "no_such_model"), (0,), 8, "quick", num_patterns=(4,))
    named = suite.expand("capacity-omniglot", ("raw_slots", "hopfield_hebb"), (0,), 8, "quick", num_patterns=(4,))
    assert {s.model for s in named} == {"raw_slots"}


def test_image_capacity_figures_on_a_tiny_run(tmp_path, data_root, one_thread):
    out = tmp_path / "out"
    with pytest.raises(MembenchError, match="no finished capacity runs"):
        capacity_figures(out)
    specs = CAPACITY_SUITES["capacity-omniglot"].expand("capacity-omniglot", ("raw_slots", "modern_hopfield",
                                                        "passthrough"), (0,), 16, "quick", num_patterns=(4, 16),
                                                        budget=8 * 1024)
    specs += CAPACITY_SUITES["capacity-cifar"].expand("capacity-cifar", ("raw_slots", "passthrough"), (0,), 16,
                                                      "quick", num_patterns=(4, 16), budget=8 * 3072)
    run_all(specs, out, device="cpu", progress=False, command="pytest")
    cifar_record = next(r for r in ResultsStore(out).records() if r["suite"] == "capacity-cifar")
    # a Figure 3 run in the same folder is `membench figures`', not summarised here
    ResultsStore(out).save({**cifar_record, "suite": "fig3-cifar", "run_id": "fig3-cifar-a-copy", "budget": 5 * 3072})
    paths = capacity_figures(out)
    assert {p.name for p in paths} == {f"capacity_{kind}.{ext}" for kind in ("omniglot", "cifar10")
                                       for ext in ("png", "pdf")} | {"capacity_images.md", "capacity_images.csv"}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    markdown = (out / "capacity_images.md").read_text()
    assert markdown.startswith("# Capacity of the non-learned memories on images")
    from membench.capacity_images import _which  # a model of yours, meta-learned, is not called non-learned
    assert _which([{"training": None}, {"training": {"steps": 30}}]) == "memories, meta-learned ones among them"
    assert markdown.count("| model \\ N ") == 6                        # one table per data set and corruption
    sections = {s.split("\n")[0]: s for s in markdown.split("## ")[1:]}
    omniglot = "Omniglot 32x32, {}; budget 8192 float32 (8 whole images)"
    block = sections[omniglot.format("16x16 block set to 0.5")]
    mask = sections[omniglot.format("512 of 1024 pixel positions (50%) set to 0.5")]
    noise = sections[omniglot.format("Gaussian noise sigma 0.2 on every value, clipped to [0, 1]")]
    cifar = sections["CIFAR-10 32x32, 16x16 block set to 0.5; budget 24576 float32 (8 whole images)"]
    # the passthrough costs exactly the corrupted pixels; raw slots are exact while the images fit (N = 4 <= 8);
    # at N = 16 the 16 queries are one episode: no interval
    assert re.search(r"\| passthrough +\| 256\.00 ± 0\.00 +\| 256\.00 ± n/a +\|", block), block
    assert re.search(r"\| passthrough +\| 512\.00 ± 0\.00 +\| 512\.00 ± n/a +\|", mask), mask
    assert re.search(r"\| raw_slots +\| 0\.00 ± 0\.00 +\| [1-9]", noise), noise
    assert "Error: wrong pixels per image" in block and "Error: squared error per image" in cifar
    assert "- hopfield_hebb, hopfield_storkey, hopfield_pseudoinverse: Hopfield networks take flat patterns" in block
    assert "dense_associative_memory" not in block and "- dense_associative_memory: " in cifar  # binary only
    csv = (out / "capacity_images.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,corruption,level,image_size,budget,model") and len(csv) == 1 + len(specs)


def test_image_capacity_without_its_data_leaves_the_image_outputs_as_they_were(tmp_path, data_root, monkeypatch,
                                                                               one_thread, capsys):
    """The image table names the models left out by rebuilding each task: without the data it cannot, so the
    image outputs are left as they were (they used to lose those lines): an error naming the fix when that is
    all there is to write, a warning beside the binary outputs it does write."""
    out = tmp_path / "out"
    specs = CAPACITY_SUITES["capacity-omniglot"].expand("capacity-omniglot", ("raw_slots",), (0,), 16, "quick",
                                                        num_patterns=(4,), budget=8 * 1024)
    run_all(specs, out, device="cpu", progress=False, command="pytest")
    said = capsys.readouterr().err  # a capacity table reports the mean, and so does the run's line (not Figure 3's)
    assert "done: capacity-omniglot-raw_slots" in said and "mean error" in said and "median" not in said
    paths = capacity_figures(out)
    before = {path.name: path.read_bytes() for path in paths}
    assert "Not run" in before["capacity_images.md"].decode()
    monkeypatch.setenv("MEMBENCH_DATA", str(tmp_path / "nodata"))
    with pytest.raises(MembenchError, match="omniglot's cannot be rebuilt here.*were not written: point --data-dir"):
        capacity_figures(out)
    assert {path.name: path.read_bytes() for path in paths} == before
    run_all(CAPACITY_SUITES["capacity-n"].expand("capacity-n", ("raw_slots",), (0,), 16, "quick",
                                                 num_patterns=(16,)), out, device="cpu", progress=False)
    capsys.readouterr()
    assert {p.name for p in capacity_figures(out)} == {"capacity.md", "capacity.csv"}
    assert "omniglot's cannot be rebuilt here" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in paths} == before


def test_image_tables_name_the_suites_refusing_models_only_when_the_suites_models_were_run(data_root):
    """The "Not run" list says why suite models are absent; a table of models of yours alone left none out."""
    import pandas as pd

    from membench.capacity_images import _image_left_out

    spec = CAPACITY_SUITES["capacity-omniglot"].expand("capacity-omniglot", ("raw_slots",), (0,), 16, "quick",
                                                       num_patterns=(4,), budget=8 * 1024)[0]
    table = task_key({"task": spec.task, "budget": spec.budget})
    ours = _image_left_out(pd.DataFrame({"model": ["raw_slots"], "num_patterns": [4]}), table)
    assert any(line.startswith("hopfield_hebb, hopfield_storkey, hopfield_pseudoinverse: ") for line in ours), ours
    assert _image_left_out(pd.DataFrame({"model": ["my_memory:Mine"], "num_patterns": [4]}), table) == []


def test_every_row_of_the_committed_capacity_figures_has_a_colour_of_its_own():
    """Sixteen rows (the suites' eight and the meta-learned eight) drew six pairs in one colour (ebmm on
    hopfield_hebb's blue, where the README compares them)."""
    from membench.capacity_plots import row_styles

    rows = sorted(set(capacity_summary(REPO_ROOT / "results" / "capacity")[0]["row"]))
    assert len(rows) == 16, rows
    assert len({row_styles(rows)[row]["color"] for row in rows}) == len(rows)


def test_a_model_is_drawn_alike_in_every_capacity_figure_whatever_else_it_holds():
    """A row's style depends on its model alone, not on the figure's other rows: mean fill (image figures) took
    differentiable plasticity's style (binary figures), both placed after the suites' eight by the rows present."""
    from membench.capacity_plots import STYLE_ORDER, row_styles

    everything = row_styles(list(STYLE_ORDER))
    assert len({style["color"] for style in everything.values()}) == len(STYLE_ORDER)
    for row in ("mean_fill", "differentiable_plasticity", "passthrough"):
        assert row_styles([row, "raw_slots"])[row] == everything[row]


def test_the_capacity_outputs_draw_the_learned_rows_training_curves(tmp_path):
    """`membench capacity` draws training_curves beside its figures (only `membench report` did, so the
    committed one went stale), from the curves of the records in the folder."""
    import shutil

    source = REPO_ROOT / "results" / "capacity"
    record = next(r for r in ResultsStore(source).records() if r["model"] == "mann")
    ResultsStore(tmp_path).save(record)
    (tmp_path / "training").mkdir()
    shutil.copy(source / record["training"]["curve"], tmp_path / "training")
    paths = capacity_figures(tmp_path)
    assert tmp_path / "training_curves.png" in paths and (tmp_path / "training_curves.png").stat().st_size > 0


def test_an_image_capacity_panel_fits_below_a_passthrough_far_above_the_rest():
    """Omniglot's passthrough (256 wrong pixels against at most about 80) squashed every other line into the
    panel's bottom: the axis fits the others and writes the passthrough's value; CIFAR's (within twice) stays."""
    import pandas as pd

    from membench.capacity_images import _fit_below_passthrough
    from membench.plots import pyplot

    plt = pyplot()
    part = pd.DataFrame({"model": ["passthrough", "raw_slots", "mean_fill"], "mean": [256.0, 70.0, 41.0],
                         "ci_high": [float("nan"), 78.0, 42.0]})
    fig, (far, near) = plt.subplots(1, 2)
    _fit_below_passthrough(far, part)
    _fit_below_passthrough(near, part.assign(mean=[120.0, 70.0, 41.0]))
    assert far.get_ylim() == (0, 1.15 * 78.0) and [t.get_text() for t in far.texts] == [
        "above the axis: passthrough, 256"]
    assert near.get_ylim() == (0, 1) and not near.texts  # left to matplotlib (nothing drawn here)
    plt.close(fig)


def test_capacity_reads_and_writes_where_run_does_by_default(tmp_path, monkeypatch):
    """`membench capacity` with no --out looks in membench-results (as `run` writes), never the committed
    results/capacity of a checkout it is run in."""
    from click.testing import CliRunner

    from membench.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["capacity", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and "membench-results" in result.output and exited_cleanly(result)
    assert not (tmp_path / "results").exists()


def test_running_a_binary_capacity_suite_points_to_its_summary_not_table1(tmp_path):
    """`membench run --suite capacity-n` names `membench capacity`, which summarises it, and writes no table1.*
    beside the capacity tables."""
    from click.testing import CliRunner

    from membench.cli import main

    result = CliRunner().invoke(main, ["run", "--suite", "capacity-n", "--model", "raw_slots", "--num-patterns", "16",
                                       "--queries", "16", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"tables and figures: membench capacity --out {tmp_path / 'out'}" in result.output
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 1
    assert not list((tmp_path / "out").glob("table1.*"))
