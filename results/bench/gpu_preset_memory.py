"""Peak memory of one update of EBMM's gpu preset (128 episodes), measured on the CPU, per N.

    for n in 16 32 48 64 96; do python results/bench/gpu_preset_memory.py $n; done > results/bench/gpu_preset_memory.txt

Each N in its own process (peak resident memory, `getrusage`), after building the model, sampling
four batches and making one update as `membench throughput` does. On CUDA each N's update is
captured in its own graph, whose private memory pool keeps about this much: the sum over N is
roughly what one EBMM gpu-preset training process holds on the GPU.
"""
from __future__ import annotations

import resource
import sys

import torch

from membench.throughput import prepare, run_specs

num_patterns = int(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
prepare(run_specs("table1", ["ebmm"], [num_patterns], "gpu")[0], torch.device("cpu"), steps=1, warmup=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"N = {num_patterns}: peak resident {peak:.2f} GB (after imports {before:.2f} GB)")
