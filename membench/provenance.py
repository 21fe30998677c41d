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
from membench.errors import MembenchError


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the processor's (`cpu_name`)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def reset_peak_memory(device: torch.device) -> None:
    """On CUDA, start `peak_memory_gb`'s count afresh (memory the allocator still caches stays counted)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """On CUDA, the most GPU memory this process's caching allocator has kept since `reset_peak_memory` (GiB,
    CUDA graphs' pools included: what the process keeps from others sharing the GPU, the CUDA context aside);
    None elsewhere."""
    return round(torch.cuda.max_memory_reserved(device) / 2**30, 2) if device.type == "cuda" else None


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; elsewhere the machine type), marked by `processor_label`."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)  # the last processor's fields
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return processor_label(fields.get("model name") or platform.machine(), fields.get("flags", "").split())


def processor_label(name: str, flags: list[str]) -> str:
    """`name` marked '+AMX' where the processor has bfloat16 matrix units (a bf16 meta-training update is much
    faster there than on other processors), else '+AVX512' where it has AVX-512: processors that share a generic
    name ('AMD EPYC') and differ in speed are kept apart in timing tables."""
    return name + (" +AMX" if "amx_bf16" in flags else " +AVX512" if "avx512f" in flags else "")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(HEAD, dirty) of this checkout: dirty when a tracked file differs from HEAD (outside the results, but
    the shipped checkpoints count) or an untracked, unignored file sits in the code's folders.

    Where the code was copied without .git (remote machines), $MEMBENCH_GIT_COMMIT and
    $MEMBENCH_GIT_DIRTY (0 or 1; anything else is refused) say it instead. A checkout that is not the root
    of its git repository (a copy inside another one) has no state of its own: (None, None). Computed once
    per process, before any results are written.
    """
    if os.environ.get("MEMBENCH_GIT_COMMIT"):
        dirty = os.environ.get("MEMBENCH_GIT_DIRTY")
        if dirty not in (None, "0", "1"):
            raise MembenchError(f"MEMBENCH_GIT_DIRTY={dirty!r} must be 0 (a clean tree) or 1 (changes not committed)")
        return os.environ["MEMBENCH_GIT_COMMIT"], None if dirty is None else dirty == "1"
    return checkout_state(Path(membench.__file__).resolve().parent.parent)


def checkout_state(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD, dirty) of the checkout at `root` as `git_state` defines them, from git."""
    root = Path(root).resolve()

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # (a hook's GIT_DIR is not ours)

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, env=env)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return None, None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        answers = [git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"),
                   git("status", "--porcelain", "--untracked-files=no", "--", "results/checkpoints"),
                   git("ls-files", "--others", "--exclude-standard", "--", *CODE_FOLDERS)]
        if any(answer.returncode != 0 for answer in answers):
            return head.stdout.strip() or None, None
        return head.stdout.strip() or None, any(answer.stdout.strip() for answer in answers)
    except (OSError, subprocess.SubprocessError):
        return None, None


CODE_FOLDERS = ("membench", "baselines", "ebmm")  # an untracked file here is code the commit does not hold


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts stored with every record (`threads`: torch's CPU threads, which move the last
    digits of some sums on the CPU)."""
    commit, dirty = git_state()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "membench": membench.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
