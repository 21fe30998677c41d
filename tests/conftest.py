"""Shared test fixtures."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test gets its own checkpoint cache, no shipped checkpoints, full float32 precision, and none of the
    user's data directory (environment or an earlier test's --data-dir) or provenance overrides."""
    from membench import checkpoints, datasets

    monkeypatch.setenv("MEMBENCH_CACHE", str(tmp_path / "cache"))
    for name in ("MEMBENCH_CUDA_GRAPHS", "MEMBENCH_CUDA_GRAPHS_OFF", "MEMBENCH_DATA", "MEMBENCH_GIT_COMMIT",
                 "MEMBENCH_GIT_DIRTY"):
        monkeypatch.delenv(name, raising=False)  # a session's or a user's switches, not the tests'
    monkeypatch.setattr(datasets, "_data_dir_override", None)
    monkeypatch.setattr(checkpoints, "SHIPPED_CHECKPOINTS", tmp_path / "shipped")
    torch.set_float32_matmul_precision("highest")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; tests that need it skip cleanly when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the repo in development and CI)")
    return path


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """Fixture data in the published formats (test splits: 30 Omniglot, 70 CIFAR images), found via $MEMBENCH_DATA."""
    from membench import datasets
    from tests.test_datasets import write_fixture_data

    root = write_fixture_data(tmp_path / "data")
    monkeypatch.setattr(datasets, "_data_dir_override", None)
    monkeypatch.setenv("MEMBENCH_DATA", str(root))
    return root


def exited_cleanly(result) -> bool:
    """A CliRunner result ended by the command's own exit (a message and a status), not by an exception that
    escaped it: CliRunner prints no traceback, so the output alone cannot tell."""
    return result.exception is None or isinstance(result.exception, SystemExit)


def the_error_line(result) -> str:
    """The one `Error: ...` line of a failed command's CliRunner output, asserting that the command ended by its own
    exit, with that line last, and printed no traceback (CliRunner would show one the command printed)."""
    assert exited_cleanly(result), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output and not re.search(r'^\s*File ".*", line \d+', result.output, re.M), \
        result.output
    return errors[0]


def records_in(out: Path, pattern: str = "*.json") -> list[dict]:
    """The run records `membench run --out out` wrote (out/runs/<pattern>), in file-name order."""
    return [json.loads(path.read_text()) for path in sorted((Path(out) / "runs").glob(pattern))]
