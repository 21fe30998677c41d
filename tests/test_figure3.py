"""Figure 3 sweeps: suite expansion, per-batch summaries beside the paper, the CLI end to end."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from membench.cli import main
from membench.errors import MembenchError
from membench.figure3 import batch_errors, summarise
from membench.suites import get_suite


def test_sweep_suite_expands_points(data_root):
    suite = get_suite("fig3-omniglot")
    specs = suite.expand("fig3-omniglot", ("raw_slots",), (0, 1), suite.queries, "quick", num_patterns=(16,))
    assert suite.queries == 64000                                   # 1000 batches of 64
    assert sorted({s.budget for s in specs}) == [1024, 2048, 4096, 8192, 16384]
    assert len(specs) == 10 and all(s.model == "raw_slots" and s.options == {} for s in specs)
    everything = suite.expand("fig3-omniglot", None, (0,), suite.queries, "quick", num_patterns=(16,))
    ebmm = {s.budget: s.options for s in everything if s.model == "ebmm"}
    assert ebmm[257 * 16] == {"energy": "resnet_fc", "memory_size": 16}
    assert ebmm[578 * 6] == {"energy": "resnet_conv", "memory_size": 6}
    assert suite.curve_label("ebmm", ebmm[578 * 6]) == "EBMM_conv"
    assert {s.budget for s in everything if s.model == "memory_networks"} == {64 * 48, 64 * 128}
    assert specs[0].task == {"kind": "omniglot", "num_patterns": 16, "image_size": 32, "block": 16,
                             "data": "images_background_small1.zip+images_background_small2.zip (train 120, test 30)"}
    assert len({s.run_id for s in specs}) == 10
    assert suite.curve_label("raw_slots", {}) == "raw_slots" and suite.curve_label("lstm", {}) == "lstm"
    with pytest.raises(MembenchError, match="budget per sweep point"):
        suite.expand("fig3-omniglot", None, (0,), 64, "quick", budget=8256)
    with pytest.raises(MembenchError, match="no curve for lstm"):
        suite.expand("fig3-omniglot", ("lstm",), (0,), 64, "quick")


def _record(model: str, memory: int, errors: list[float], n: int, seed: int = 0) -> dict:
    return {"run_id": f"{model}-{memory}-{seed}", "suite": "custom", "model": model, "options": {}, "seed": seed,
            "preset": "quick", "task": {"kind": "cifar10", "num_patterns": n, "image_size": 32, "block": 16},
            "memory_floats": memory, "budget": memory, "errors": errors, "training": None, "wall_time_s": 1.0,
            "environment": {"device": "cpu"}, "command": "membench run"}


def test_summary_uses_per_batch_means_and_matches_the_paper():
    batches = np.arange(100, dtype=float)                     # batch b: queries b-1, b+1 -> mean b
    errors = np.stack([batches - 1, batches + 1], axis=1).ravel().tolist()
    records = [_record("MemNet", 4100, errors[:100], 2), _record("MemNet", 4100, errors[100:], 2, seed=1),
               _record("MemNet", 5000, [1.0, 3.0], 2)]
    assert batch_errors(records[0]).tolist() == list(range(50))
    reference = pd.DataFrame({"dataset": ["cifar"], "model": ["MemNet"], "memory_k": [4.10],
                              "error": [22.42], "lo": [20.25], "hi": [24.67]})
    summary = summarise(records, reference)
    first = summary.iloc[0]
    assert first.batches == 100 and first.seeds == "0 1"
    assert first["median"] == pytest.approx(np.median(batches))
    assert (first.p5, first.p95) == pytest.approx(tuple(np.percentile(batches, [5, 95])))
    assert (first.paper, first.paper_lo, first.paper_hi) == (22.42, 20.25, 24.67)
    assert summary.iloc[1]["median"] == 2.0 and np.isnan(summary.iloc[1].paper)   # 5.0k: no paper point


def test_cli_sweep_then_figures(data_root, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--suite", "fig3-cifar", "--model", "raw_slots", "--queries", "128", "--data-dir", str(data_root),
                                  "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Figure 3" in result.output and "Table 1" not in result.output
    result = runner.invoke(main, ["run", "--suite", "fig3-omniglot", "--model", "raw_slots", "--num-patterns", "16", "--queries", "64",
                                  "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["figures", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("fig3.md", "fig3.csv", "fig3.png", "fig3.pdf", "fig3_recon_cifar10_raw_slots.png",
                 "fig3_recon_omniglot_raw_slots.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "fig3.csv")
    assert len(summary) == 10 and set(summary.batches) == {2, 4}
    cifar = summary[summary.dataset == "cifar10"].sort_values("memory_floats")
    assert cifar["median"].is_monotonic_decreasing          # more whole images stored: less error


def test_figure3_keeps_block_corrupted_runs_only(monkeypatch, tmp_path):
    """Capacity runs under a pixel mask or noise (block 0) in the same directory never join a Figure 3 curve."""
    from membench import figure3

    block = _record("raw_slots", 3072, [1.0], 2)
    masked = {**_record("raw_slots", 3072, [9.0], 2), "run_id": "masked"}
    masked["task"] = {**masked["task"], "block": 0, "mask": 0.5}
    noisy = {**_record("raw_slots", 3072, [9.0], 2), "run_id": "noisy"}
    noisy["task"] = {**noisy["task"], "block": 0, "noise": 0.2}

    class Store:
        def __init__(self, out_dir):
            pass

        def records(self):
            return [block, masked, noisy]

    monkeypatch.setattr(figure3, "ResultsStore", Store)
    assert [r["run_id"] for r in figure3.image_records(tmp_path)] == [block["run_id"]]
