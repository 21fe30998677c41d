"""EBMM quick's compiled update (16 episodes, N = 64, CPU) under other torch.compile settings.

    python results/bench/inductor_knobs.py KNOB      # KNOB: base | static | cppwrap | autotune

base: the stepper's own compile (dynamic shapes); static: dynamic=False; cppwrap: inductor's C++
wrapper; autotune: mode="max-autotune-no-cudagraphs" with static shapes. Prints the time to compile and
warm up and the median of 5 rounds of 10 updates (ms per update).
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
from torch._inductor import config as inductor_config

from membench.throughput import prepare, run_specs

KNOBS = {"base": dict(dynamic=True), "static": dict(dynamic=False), "cppwrap": dict(dynamic=True),
         "autotune": dict(dynamic=False, mode="max-autotune-no-cudagraphs")}
knob = sys.argv[1]
if knob == "cppwrap":
    inductor_config.cpp_wrapper = True
original = torch.compile
torch.compile = lambda fn, dynamic=None, **_: original(fn, **KNOBS[knob])  # the stepper's call, re-optioned
started = time.time()
time_round, _ = prepare(run_specs("table1", ["ebmm"], [64], "quick")[0], torch.device("cpu"), steps=10)
warm = time.time() - started
seconds = [time_round() for _ in range(5)]
print(knob, f"compile+warm {warm:.0f}s", "ms/update median", round(1000 * statistics.median(seconds), 2),
      [round(1000 * s, 1) for s in seconds], flush=True)
