"""Where a result came from: the commit and whether the code that made it was committed."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from membench.errors import MembenchError
from membench.provenance import checkout_state, git_state, peak_memory_gb, processor_label, reset_peak_memory


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for name in ("membench/__init__.py", "results/table1/table1.md", "results/checkpoints/m.pt", "README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    _git(root.parent, "init", "-q", str(root))
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return root


def test_a_clean_checkout_is_clean_and_results_do_not_make_it_dirty(checkout):
    head = _git(checkout, "rev-parse", "HEAD")
    assert checkout_state(checkout) == (head, False)
    (checkout / "results" / "table1" / "table1.md").write_text("regenerated\n")  # outputs, rewritten by runs
    (checkout / "notes.txt").write_text("untracked, outside the code\n")
    assert checkout_state(checkout) == (head, False)


@pytest.mark.parametrize("change", ["membench/__init__.py", "results/checkpoints/m.pt", "membench/new_module.py"])
def test_code_or_a_shipped_checkpoint_not_committed_makes_it_dirty(checkout, change):
    """A tracked edit, a shipped checkpoint runs read, or an untracked file among the code's folders."""
    (checkout / change).write_text("changed\n")
    assert checkout_state(checkout)[1] is True


def test_a_copy_inside_another_repository_has_no_state_of_its_own(checkout):
    copy = checkout / "vendored" / "membench-copy"
    (copy / "membench").mkdir(parents=True)
    (copy / "membench" / "__init__.py").write_text("edited\n")
    assert checkout_state(copy) == (None, None)  # not the outer repository's HEAD, called clean


def test_a_dirty_flag_given_by_hand_must_be_0_or_1(monkeypatch):
    git_state.cache_clear()
    monkeypatch.setenv("MEMBENCH_GIT_COMMIT", "abc")
    monkeypatch.setenv("MEMBENCH_GIT_DIRTY", "true")
    try:
        with pytest.raises(MembenchError, match="MEMBENCH_GIT_DIRTY='true' must be 0"):
            git_state()
        monkeypatch.setenv("MEMBENCH_GIT_DIRTY", "0")
        git_state.cache_clear()
        assert git_state() == ("abc", False)
    finally:
        git_state.cache_clear()


def test_processors_sharing_a_generic_name_are_told_apart_by_their_matrix_units():
    """Timing rows are keyed by the processor's label: a Zen 2 and a Zen 4 are both 'AMD EPYC' by name."""
    assert processor_label("AMD EPYC", ["avx2", "fma"]) == "AMD EPYC"
    assert processor_label("AMD EPYC", ["avx2", "avx512f", "avx512_bf16"]) == "AMD EPYC +AVX512"
    assert processor_label("Intel(R) Xeon(R) Processor", ["avx512f", "amx_bf16"]) == "Intel(R) Xeon(R) Processor +AMX"


def test_peak_memory_is_the_cuda_allocators_most_held_in_gib_and_none_elsewhere(monkeypatch):
    """What a training stretch records: GPU memory reserved (CUDA graphs' pools included), not merely allocated."""
    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: asked.append(device) or 9_245_000_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 1)
    assert peak_memory_gb(torch.device("cuda", 0)) == 8.61 and asked == [torch.device("cuda", 0)]
    assert peak_memory_gb(torch.device("cpu")) is None and len(asked) == 1
    reset = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset.append)
    reset_peak_memory(torch.device("cpu"))  # no CUDA call on a CPU (none may be initialised)
    reset_peak_memory(torch.device("cuda", 0))
    assert reset == [torch.device("cuda", 0)]
