"""Shared test fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test gets its own checkpoint cache, no shipped checkpoints and full float32 precision."""
    from membench import runner

    monkeypatch.setenv("MEMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "SHIPPED_CHECKPOINTS", tmp_path / "shipped")
    torch.set_float32_matmul_precision("highest")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; tests that need it skip cleanly when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the repo in development and CI)")
    return path
