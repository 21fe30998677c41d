"""Is EBMM's write under-converged? Write with extra steps after the learned T, measured on a shipped checkpoint.

    python results/diagnostics/ebmm-read/write_steps.py [PRESET] > results/diagnostics/ebmm-read/write_steps_PRESET.txt

PRESET: quick (the default) or gpu (finished or paused), evaluated here on the CPU in float32. The write's
T learned steps are followed by `extra` steps that repeat the last step's learned rates (and elementwise
factors); reading is the model's own (K learned steps). For each N, on 3072 / N fresh test episodes
(generator seed 123, as read_errors.py): the error from the queries and from the stored patterns themselves
(0 where each stored pattern is a fixed point of reading). Where extra steps lower both, the write stops
short of the minima it is heading for and more write steps should pay in training; where they do not, the
learned steps are as far as this energy's writing loss takes the memory.
"""
from __future__ import annotations

import dataclasses
import sys

import torch
from torch import nn

from membench.checkpoints import default_checkpoint_dir
from membench.provenance import git_state
from membench.runner import load_trained
from membench.suites import RunSpec

torch.set_num_threads(1)
EXTRA = (0, 1, 2, 4)


def extended(model, extra: int) -> None:
    """Give `model` extra write steps repeating its last learned step (in place; extra = 0: as trained)."""
    steps = model.write_lr.shape[0]
    last = model.write_lr.data[-1:]
    model.write_lr = nn.Parameter(torch.cat([model.write_lr.data[:steps], last.expand(extra, *last.shape[1:])]))
    if model.cfg.elementwise_write_lr:
        model.write_scale = nn.ParameterList(
            nn.Parameter(torch.cat([s.data[:steps], s.data[-1:].expand(extra, *s.shape[1:])])) for s in model.write_scale)
    model.cfg = dataclasses.replace(model.cfg, write_steps=steps + extra)


def main(preset: str) -> None:
    commit, dirty = git_state()
    print(f"commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; EBMM {preset}, shipped checkpoint")
    print("N, extra write steps: error from the queries | from the stored patterns (bits of 128)")
    for n in (16, 32, 48, 64, 96):
        spec = RunSpec("table1-learned", "ebmm", {"kind": "binary", "num_patterns": n, "dim": 128, "erased": 64},
                       8256, 0, 3000, preset)
        episodes = None
        for extra in EXTRA:
            task, model, path = load_trained(spec, default_checkpoint_dir())
            assert path is not None, f"the {preset} checkpoint is shipped in results/checkpoints"
            if episodes is None:
                episodes = task.sample(3072 // n, torch.Generator().manual_seed(123))
                if n == 16:
                    print(f"{path.name}: T = {model.cfg.write_steps} learned write steps, K = {model.cfg.read_steps}")
            extended(model, extra)
            with torch.no_grad():
                state = model.write(episodes.patterns)
                wrong = [((model.read(state, x) - episodes.patterns).abs() >= 0.5).sum(-1).float().mean().item()
                         for x in (episodes.queries, episodes.patterns)]
            print(f"N = {n:3d}, +{extra}: {wrong[0]:6.2f} | {wrong[1]:6.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
