"""Is EBMM's write under-converged? Write with extra steps after the learned T, measured on a shipped checkpoint.

    python results/diagnostics/ebmm-read/write_steps.py [PRESET [KEY=VALUE ...]] > results/diagnostics/ebmm-read/write_steps_PRESET.txt

PRESET: quick (the default) or gpu (finished or paused), evaluated here on the CPU in float32; KEY=VALUE: a
screen's options (as `membench run --option`), its checkpoint found in $MEMBENCH_CACHE/checkpoints or the
shipped ones. The write's
T learned steps are followed by `extra` steps that repeat the last step's learned rates (and elementwise
factors, and a heavy-ball write's momentum); reading is the model's own (K learned steps). For each N, on
3072 / N fresh test episodes (generator seed 123, as read_errors.py): the error from the queries and from the stored patterns themselves
(0 where each stored pattern is a fixed point of reading). Where extra steps lower both, the write stops
short of the minima it is heading for and more write steps should pay in training; where they do not, the
learned steps are as far as this energy's writing loss takes the memory.
"""
from __future__ import annotations

import copy
import dataclasses
import sys

import torch
from torch import nn

from checkpoint import NUM_PATTERNS, episodes, header, trained
from membench.cli_common import parse_options

torch.set_num_threads(1)
EXTRA = (0, 1, 2, 4)


def extended(model, extra: int):
    """A copy of `model` with extra write steps repeating its last learned step (extra = 0: as trained)."""
    model = copy.deepcopy(model)
    steps = model.write_lr.shape[0]
    last = model.write_lr.data[-1:]
    model.write_lr = nn.Parameter(torch.cat([model.write_lr.data[:steps], last.expand(extra, *last.shape[1:])]))
    if model.cfg.n_scaled_rates:
        power = model.write_lr_power.data
        model.write_lr_power = nn.Parameter(torch.cat([power, power[-1:].expand(extra, *power.shape[1:])]))
    if model.cfg.elementwise_write_lr:
        model.write_scale = nn.ParameterList(
            nn.Parameter(torch.cat([s.data[:steps], s.data[-1:].expand(extra, *s.shape[1:])])) for s in model.write_scale)
    if hasattr(model, "write_momentum"):  # write_momentum: logits of the momenta of steps 2..T
        momenta = model.write_momentum.data
        model.write_momentum = nn.Parameter(torch.cat([momenta, momenta[-1:].expand(extra)]))
    model.cfg = dataclasses.replace(model.cfg, write_steps=steps + extra)
    return model


def main(preset: str, options: dict) -> None:
    print(header(preset, options))
    print("N, extra write steps: error from the queries | from the stored patterns (bits of 128)")
    for n in NUM_PATTERNS:
        task, trained_model, path = trained(preset, options, n)
        sample = episodes(task, n)
        if n == NUM_PATTERNS[0]:
            print(f"{path.name}: T = {trained_model.cfg.write_steps} learned write steps, "
                  f"K = {trained_model.cfg.read_steps}")
        for extra in EXTRA:
            model = extended(trained_model, extra)
            with torch.no_grad():
                state = model.write(sample.patterns)
                wrong = [((model.read(state, x) - sample.patterns).abs() >= 0.5).sum(-1).float().mean().item()
                         for x in (sample.queries, sample.patterns)]
            print(f"N = {n:3d}, +{extra}: {wrong[0]:6.2f} | {wrong[1]:6.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick", parse_options(None, None, tuple(sys.argv[2:])))
