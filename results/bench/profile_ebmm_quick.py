"""Where EBMM quick's meta-training update spends its time on the CPU (torch profiler).

    python results/bench/profile_ebmm_quick.py > results/bench/profile_ebmm_quick.txt

Builds the update exactly as `membench throughput` does (16 episodes, N = 64, compiled as the
preset says), warms it up, then profiles 10 updates and prints the operators by self time.
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from membench.provenance import device_name, git_state
from membench.throughput import prepare, run_specs

STEPS = 10
time_round, row = prepare(run_specs("table1", ["ebmm"], [64], "quick")[0], torch.device("cpu"), steps=STEPS)
seconds = [time_round() for _ in range(3)]
with profile(activities=[ProfilerActivity.CPU]) as prof:
    time_round()
info = row(seconds)
commit, dirty = git_state()
print(f"commit {commit}{' (dirty)' if dirty else ''}; {device_name(torch.device('cpu'))}; torch {torch.__version__}; "
      f"threads {torch.get_num_threads()}; "
      f"compiled {info['compiled']}; unprofiled median {info['ms_per_step']} ms per update over 3 rounds of {STEPS}")
averages = prof.key_averages()
matmul = sum(e.self_cpu_time_total for e in averages if e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"))
total = sum(e.self_cpu_time_total for e in averages)
print(f"profiled {STEPS} updates: {total / 1e3 / STEPS:.1f} ms per update, of which matrix multiplication "
      f"(mm, bmm, addmm, baddbmm) {matmul / 1e3 / STEPS:.1f} ms ({100 * matmul / total:.0f}%)")
print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
