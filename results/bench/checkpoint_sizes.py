"""Sizes of the gpu presets' checkpoint files as membench writes them, for Table 1's learned models and every
Figure 3 point: weights only (what `membench ship` commits of a finished checkpoint, and what a session carries
back of a paused one whose AdamW state is over 8 MB) and with AdamW's state (a paused checkpoint on the
machine that trained it). Built untrained on the CPU: training adds only its curve and history to a file
(tens of kB; the shipped paused ebmm-gpu checkpoint is 7.47 MB beside 7.45 here).

    python results/bench/checkpoint_sizes.py [--data-dir ../shared/data] > results/bench/checkpoint_sizes.txt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from membench.checkpoints import RESUME_STATE_MAX_MB, portable, saved_bytes, weights_only
from membench.datasets import set_data_dir
from membench.provenance import git_state
from membench.registry import make_task
from membench.build import build_model
from membench.stepper import Stepper
from membench.suites import get_suite

MB = 2**20


def sizes(spec) -> tuple[float, float, float]:
    """MB of the checkpoint with AdamW's state, weights only, and as carried while its training is paused."""
    model = build_model(spec, make_task(spec.task))
    stepper = Stepper(model, model.preset.train, torch.device("cpu"))
    for parameter in model.parameters():  # one update of zero gradients: AdamW's state takes its full size
        parameter.grad = torch.zeros_like(parameter)
    stepper.optimizer.step()
    saved = {"model": model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
             "generator": torch.Generator().get_state(), "step": 1, "elapsed_s": 0.0, "curve": [], "history": [],
             "config": {"steps": model.preset.train.steps}}
    return (len(saved_bytes(saved)) / MB, len(saved_bytes(weights_only(saved))) / MB,
            len(saved_bytes(portable(saved))) / MB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    args = parser.parse_args()
    set_data_dir(args.data_dir)
    commit, dirty = git_state()
    print(f"# commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; MB = 2^20 bytes; a paused "
          f"checkpoint carries AdamW's state up to {RESUME_STATE_MAX_MB:g} MB")
    print(f"# {'suite, model (memory floats)':44} {'with AdamW':>10} {'weights':>8} {'paused, carried':>16}")
    runs = get_suite("table1-learned").expand("table1-learned", None, (0,), 1, "gpu", (64,))
    for suite in ("fig3-omniglot", "fig3-cifar"):
        runs += get_suite(suite).expand(suite, ("EBMM_FC", "EBMM_conv", "MemNet", "MANN"), (0,), 1, "gpu")
    totals: dict[str, float] = {}
    for spec in runs:
        energy = spec.options.get("energy")
        label = f"{spec.suite} {spec.model}{'/' + energy if energy else ''} ({spec.budget})"
        full, weights, carried = sizes(spec)
        print(f"{label:46} {full:10.2f} {weights:8.2f} {carried:16.2f}")
        if spec.suite.startswith("fig3"):
            totals[spec.suite] = totals.get(spec.suite, 0.0) + weights
    for suite, total in totals.items():
        print(f"# {suite}: the gpu points' weights together {total:.1f} MB")
    print(f"# both data sets: {sum(totals.values()):.1f} MB")


if __name__ == "__main__":
    main()
