"""Floating-point operations of one meta-training update of each gpu preset (and EBMM quick), counted on
the CPU with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and every
backward), so that GPU sessions can be planned before a GPU is lent.

    MEMBENCH_DATA=../shared/data python results/bench/meta_update_flops.py > results/bench/meta_update_flops.txt

Table 1 models at N = 64; Figure 3 models at each memory size of their curve (N = 64 images). One update of
one episode is counted (in float32, eagerly) and multiplied by the preset's episodes per update; the
preset's whole training is that times its updates. The minutes at 20 and 100 TFLOP/s are arithmetic, not
measurements: what a GPU sustains on these updates is for a GPU session to measure (`make throughput-gpu`).
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from membench.budget import TABLE1_BUDGET
from membench.provenance import cpu_name, git_state
from membench.registry import make_task
from membench.build import build_model
from membench.stepper import Stepper
from membench.run_spec import RunSpec
from membench.suites import get_suite


def count(spec: RunSpec) -> tuple[float, float, object]:
    """(FLOPs of one update of one episode, seconds it took here, the model's TrainConfig)."""
    task = make_task(spec.task)
    torch.manual_seed(0)
    model = build_model(spec, task)
    train = model.preset.train
    stepper = Stepper(model, dataclasses.replace(train, batch_size=1, cuda_graph=False, compile=False,
                                                 precision="float32"), torch.device("cpu"))
    batch = task.sample(1, torch.Generator().manual_seed(0), split="train")
    model.train()
    stepper.step(batch.patterns, batch.queries)  # first update: lazily made state (AdamW)
    counter = FlopCounterMode(display=False)
    with counter:
        started = time.perf_counter()
        stepper.step(batch.patterns, batch.queries)
        seconds = time.perf_counter() - started
    return counter.get_total_flops(), seconds, train


def line(label: str, spec: RunSpec) -> str:
    flops, seconds, train = count(spec)
    update, total = flops * train.batch_size, flops * train.batch_size * train.steps
    return (f"{label:<44} {flops / 1e9:>9.2f} {train.batch_size:>5} {update / 1e12:>8.3f} {train.steps:>6} "
            f"{total / 1e15:>7.2f} {total / 20e12 / 60:>8.1f} {total / 100e12 / 60:>8.1f} {seconds:>7.2f}")


def main() -> None:
    commit, dirty = git_state()
    torch.set_num_threads(2)
    print(f"# commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; {cpu_name()}, 2 threads")
    print(f"# {'preset, model (memory floats)':<42} {'GF/ep':>9} {'batch':>5} {'TF/upd':>8} {'steps':>6} "
          f"{'PF all':>7} {'min@20TF':>8} {'min@100T':>8} {'cpu s/ep':>7}")
    table1 = make_task({"kind": "binary", "num_patterns": 64, "dim": 128, "erased": 64}).config()
    quick = RunSpec("flops", "ebmm", table1, TABLE1_BUDGET, 0, 64, "quick")
    print(line("table1 quick ebmm", quick), flush=True)
    for model in ("ebmm", "mann", "memory_networks", "differentiable_plasticity", "lstm"):
        print(line(f"table1 gpu {model}", dataclasses.replace(quick, model=model, preset="gpu")), flush=True)
    for suite in ("fig3-omniglot", "fig3-cifar"):
        for spec in get_suite(suite).expand(suite, None, (0,), 64, "gpu"):
            if spec.model in ("raw_slots", "passthrough"):
                continue
            task = make_task(spec.task)
            memory = build_model(spec, task).memory_floats(task.spec)
            name = spec.model + (f"/{spec.options['energy']}" if "energy" in spec.options else "")
            print(line(f"{suite} gpu {name} ({memory})", spec), flush=True)


if __name__ == "__main__":
    main()
