"""What the writing loss's gradient-norm term (alpha ||grad_x E||^2, `grad_norm_term`) costs in Figure 3's EBMM
gpu updates: FLOPs of one meta-training update of one episode with the term and without it, at the smallest
memory of each CIFAR curve (the counts hardly vary along a curve: `meta_update_flops.txt`).

    MEMBENCH_DATA=../shared/data python results/bench/grad_norm_term_flops.py > results/bench/grad_norm_term_flops.txt

Counted as `meta_update_flops.py` counts (FlopCounterMode, float32, eagerly, on the CPU); the seconds are one
eager CPU update of one episode on one thread, not a GPU figure. Whether a GPU preset may drop the term is a
side-by-side training run's call (the paper's App. notes: it "helps early in training; the energy term alone
also works"); this only says what it would save.
"""
from __future__ import annotations

import dataclasses

import torch

from membench.provenance import cpu_name, git_state
from membench.suites import get_suite
from meta_update_flops import count


def main() -> None:
    commit, dirty = git_state()
    torch.set_num_threads(1)
    print(f"# commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; {cpu_name()}, 1 thread")
    print(f"# {'energy (memory_size)':<26} {'term':>5} {'GF/ep':>8} {'share':>6} {'cpu s/ep':>8}")
    seen = set()
    for spec in get_suite("fig3-cifar").expand("fig3-cifar", None, (0,), 64, "gpu"):
        if spec.model != "ebmm" or spec.options["energy"] in seen:
            continue
        seen.add(spec.options["energy"])
        label = f"{spec.options['energy']} ({spec.options['memory_size']})"
        counts = {term: count(dataclasses.replace(spec, options={**spec.options, "grad_norm_term": term}))
                  for term in (True, False)}
        for term, (flops, seconds, _) in counts.items():
            print(f"{label:<28} {str(term):>5} {flops / 1e9:>8.2f} {flops / counts[True][0]:>6.2f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
