"""Meta-training throughput: episodes per second of the real update (`membench throughput`).

Times `Stepper.step` (forward, second-order backward, clipping, AdamW; a CUDA graph replay
with --cuda-graph) on the Table 1 task at one N, after warm-up updates, on pre-sampled
batches (sampling is left out: it is a CPU-side cost that overlaps with GPU work). CUDA
timings synchronise before and after the timed loop. Rows are merged into a CSV keyed by
device name, model, preset, batch size, N, graph mode and commit, so a rerun replaces its
own rows and keeps the others (CPU and CUDA rows side by side).
"""
from __future__ import annotations

import dataclasses
import io
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from membench.budget import TABLE1_BUDGET
from membench.errors import MembenchError
from membench.registry import make_task
from membench.runner import build_model, git_state
from membench.stepper import Stepper
from membench.store import write_text_atomic
from membench.suites import RunSpec

COLUMNS = ["device", "device_name", "model", "preset", "batch_size", "num_patterns", "episodes_per_s", "ms_per_step",
           "commit", "cuda_graph", "steps", "threads", "torch", "measured_at"]
KEY = ["device_name", "model", "preset", "batch_size", "num_patterns", "cuda_graph", "commit"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: str, preset: str, device: torch.device, num_patterns: int = 64, batch_size: int | None = None,
            steps: int = 20, warmup: int = 3, cuda_graph: bool = False) -> dict[str, Any]:
    """One row: the mean time of `steps` updates of `model` at `preset` (batch size from the preset unless given)."""
    task = make_task({"kind": "binary", "num_patterns": num_patterns, "dim": 128, "erased": 64})
    spec = RunSpec("throughput", model, task.config(), TABLE1_BUDGET, 0, num_patterns, preset)
    torch.manual_seed(0)
    built = build_model(spec, task).to(device)
    if not built.trainable:
        raise MembenchError(f"model '{model}' is not meta-trained; throughput measures meta-training updates")
    config = dataclasses.replace(built.preset.train, cuda_graph=cuda_graph,
                                 batch_size=batch_size or built.preset.train.batch_size)
    stepper = Stepper(built, config, device)
    generator = torch.Generator().manual_seed(0)
    batches = [task.sample(config.batch_size, generator, split="train").to(device) for _ in range(4)]
    built.train()
    for index in range(warmup):
        stepper.step(batches[index % 4].patterns, batches[index % 4].queries)
    _synchronize(device)
    started = time.perf_counter()
    for index in range(steps):
        out = stepper.step(batches[index % 4].patterns, batches[index % 4].queries)
    _synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    if not bool(out.finite):
        raise MembenchError(f"model '{model}' ({preset}) produced a non-finite loss while being timed")
    commit, dirty = git_state()
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "model": model, "preset": preset, "batch_size": config.batch_size, "num_patterns": num_patterns,
        "episodes_per_s": round(config.batch_size / seconds, 1), "ms_per_step": round(1000 * seconds, 2),
        "commit": (commit or "unknown")[:10] + ("-dirty" if dirty else ""),
        "cuda_graph": stepper.graphs_on, "steps": steps, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def merge(path: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Add `rows` to the CSV at `path` (a row with the same key replaces the old one); return the table."""
    path = Path(path)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if path.exists():
        try:
            old = pd.read_csv(path, dtype={"commit": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise MembenchError(f"{path} is not a throughput CSV ({exc}); move it aside and rerun") from None
        frame = pd.concat([old, frame], ignore_index=True).drop_duplicates(KEY, keep="last")
    frame = frame.sort_values(["device", "model", "preset", "num_patterns", "batch_size", "cuda_graph"], kind="stable")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_text_atomic(path, buffer.getvalue())
    return frame
