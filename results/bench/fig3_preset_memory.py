"""Peak memory of one update of a Figure 3 gpu-preset point, measured on the CPU at a few episodes.

    for b in 1 2 4; do MEMBENCH_DATA=../shared/data python results/bench/fig3_preset_memory.py resnet_conv $b; done

Each run in its own process (peak resident memory, `getrusage`): the point's model built, four batches
of `batch` episodes sampled and one update made as `membench throughput` does (CIFAR, N = 64, the
smallest memory of the curve). The growth per episode times the preset's 16 episodes is about what
one such update keeps on a GPU (a CUDA graph's private pool holds it for as long as it trains).
"""
from __future__ import annotations

import resource
import sys

import torch

from membench.throughput import prepare, run_specs

energy, batch = sys.argv[1], int(sys.argv[2])
specs = run_specs("fig3-cifar", ["ebmm"], [64], "gpu")
spec = next(s for s in specs if s.options["energy"] == energy)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
prepare(spec, torch.device("cpu"), batch_size=batch, steps=1, warmup=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"{energy} (memory_size {spec.options['memory_size']}), {batch} episodes: peak resident {peak:.2f} GB "
      f"(after imports {before:.2f} GB)")
