"""Where a result came from: the code's commit and the machine (stored in records and checkpoints)."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

import membench


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the processor's (`cpu_name`)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; elsewhere the machine type), marked '+AMX' where it has
    bfloat16 matrix units (a bf16 meta-training update is much faster there than on other processors)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)  # the last processor's fields
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name") or platform.machine()
    return name + (" +AMX" if "amx_bf16" in fields.get("flags", "").split() else "")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(HEAD, dirty) of this checkout: dirty when tracked files outside results/ differ from HEAD.

    Where the code was copied without .git (remote machines), $MEMBENCH_GIT_COMMIT and
    $MEMBENCH_GIT_DIRTY (0 or 1) say it instead. Computed once per process, before any results
    are written.
    """
    if os.environ.get("MEMBENCH_GIT_COMMIT"):
        dirty = os.environ.get("MEMBENCH_GIT_DIRTY")
        return os.environ["MEMBENCH_GIT_COMMIT"], None if dirty is None else dirty == "1"
    root = Path(membench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                                cwd=root, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts stored with every record."""
    commit, dirty = git_state()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "membench": membench.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
