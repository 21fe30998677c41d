"""What pinning inductor's compiled CPU kernels to one thread costs EBMM's quick update (compiled, 16 episodes, N = 64).

Compiled training differs in its last bits between thread counts (inductor splits reductions by thread); pinning
`torch._inductor.config.cpp.threads` to 1 would make it thread-invariant. Run alternately, each in a fresh process:

    for t in -1 1 -1 1; do python results/bench/compiled_threads.py $t; done > results/bench/compiled_threads.txt

(-1: inductor's default, torch's thread count.) Prints the median of 5 rounds of 10 updates after 3 untimed ones.
"""
import statistics
import sys

import torch
from torch._inductor import config as inductor_config

from membench.provenance import device_name, git_state
from membench.throughput import prepare, run_specs

inductor_config.cpp.threads = int(sys.argv[1])
spec = run_specs("table1", ["ebmm"], [64], "quick")[0]
time_round, _ = prepare(spec, torch.device("cpu"), steps=10, warmup=3)
seconds = [time_round() for _ in range(5)]
commit, dirty = git_state()
print(f"cpp.threads {sys.argv[1]:>2}, torch threads {torch.get_num_threads()}: median {1000 * statistics.median(seconds):.1f} "
      f"ms an update (rounds {', '.join(f'{1000 * s:.1f}' for s in seconds)}); {device_name(torch.device('cpu'))}, "
      f"torch {torch.__version__}, commit {(commit or 'unknown')[:10]}{' dirty' if dirty else ''}", flush=True)
