"""Matrix multiplication speed on this CPU by dtype, at the shapes of EBMM quick's update.

    python results/bench/matmul_dtypes.py > results/bench/matmul_dtypes.txt

(B·N, hidden-sized) products as in the gated-RNN energy at 16 episodes, N = 96: float32 against
bfloat16 (which processors with AMX or AVX512-BF16 multiply natively), median of 5 rounds of 50.
"""
from __future__ import annotations

import statistics
import time

import torch

from membench.provenance import cpu_name, git_state

SHAPES = [(1536, 128, 256), (1536, 256, 256), (1536, 256, 128)]
torch.manual_seed(0)
commit, dirty = git_state()
print(f"{cpu_name()}; threads {torch.get_num_threads()}; torch {torch.__version__}; commit {commit} dirty {dirty}")
for m, k, n in SHAPES:
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(5):
            a @ b
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(50):
                a @ b
            rounds.append((time.perf_counter() - started) / 50)
        seconds[dtype] = statistics.median(rounds)
    f32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
    print(f"({m} x {k}) @ ({k} x {n}): float32 {f32 * 1e6:.0f} us ({2 * m * k * n / f32 / 1e9:.0f} GFLOP/s), "
          f"bfloat16 {bf16 * 1e6:.0f} us ({2 * m * k * n / bf16 / 1e9:.0f} GFLOP/s): {f32 / bf16:.1f}x")
