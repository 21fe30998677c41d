"""What read_errors.py and write_steps.py share: a preset's trained EBMM, built on the CPU in float32 from its
checkpoint (a screen's options: found in $MEMBENCH_CACHE/checkpoints, else the shipped ones), and fresh test
episodes of its own stream (generator seed 123, not the evaluation stream)."""
from __future__ import annotations

import torch

from membench.checkpoints import default_checkpoint_dir
from membench.provenance import git_state
from membench.build import load_trained
from membench.run_spec import RunSpec

NUM_PATTERNS = (16, 32, 48, 64, 96)
QUERIES = 3072  # per N: 3072 / N episodes


def header(preset: str, options: dict) -> str:
    """The first line of an output: commit, torch and which checkpoint."""
    commit, dirty = git_state()
    return (f"commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; EBMM {preset}"
            + (f" {options}, its checkpoint" if options else ", shipped checkpoint"))


def trained(preset: str, options: dict, n: int):
    """(task, model, checkpoint path) of the preset's Table 1 run at N = n, its options applied."""
    spec = RunSpec("table1-learned", "ebmm", {"kind": "binary", "num_patterns": n, "dim": 128, "erased": 64},
                   8256, 0, 3000, preset, options)
    task, model, path = load_trained(spec, default_checkpoint_dir())
    assert path is not None, f"the {preset} checkpoint {options or ''} is in the cache or shipped"
    return task, model, path


def episodes(task, n: int):
    """QUERIES / n fresh test episodes of N = n (patterns and queries)."""
    return task.sample(QUERIES // n, torch.Generator().manual_seed(123))
