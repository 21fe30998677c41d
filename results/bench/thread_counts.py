"""Compiled EBMM training at one thread against two: how many evaluated errors differ.

Two 30-update runs of the quick preset (compiled, seed 0), each in its own process at a torch thread count,
each with its own checkpoint cache and output (the thread count is not part of a checkpoint's key), then this
script compares their records query by query and their checkpoints' weights:

    for t in 1 2; do OMP_NUM_THREADS=$t membench run --suite table1-learned --model ebmm --preset quick \
        --option train.steps=30 --num-patterns 16,96 --seeds 0 --queries 200 --no-progress \
        --checkpoint-dir /tmp/thr/ck$t --out /tmp/thr/out$t; done
    python results/bench/thread_counts.py /tmp/thr > results/bench/thread_counts.txt
"""
import sys
from pathlib import Path

import torch

from membench.records import read_record

root = Path(sys.argv[1])
for n in (16, 96):
    one, two = (read_record(next((root / f"out{t}" / "runs").glob(f"*-N{n}-s0-*.json"))) for t in (1, 2))
    assert one["environment"]["threads"] == 1 and two["environment"]["threads"] == 2, "run at 1 and 2 threads"
    errors = [torch.tensor(r["errors"], dtype=torch.float64).flatten() for r in (one, two)]
    differ = int((errors[0] != errors[1]).sum())
    print(f"N = {n}: {differ} of {len(errors[0])} query errors differ; mean {errors[0].mean():.4f} (1 thread) "
          f"against {errors[1].mean():.4f} (2 threads); commit {one['environment'].get('git_commit', '?')[:10]}, "
          f"torch {one['environment'].get('torch', '?')}, {one['environment'].get('device_name', '?')}")
weights = [torch.load(next((root / f"ck{t}").glob("*.pt")), weights_only=False)["model"] for t in (1, 2)]
gap = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
print(f"trained weights: largest difference {gap:.3g} over {len(weights[0])} tensors")
