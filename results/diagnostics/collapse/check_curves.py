"""Replays membench.training's collapse guard on every committed training curve: which would it have stopped?

A curve row holds the logged update's training error; the guard compares it with what the queries returned
unchanged err on that batch, which curves do not hold. Here that is the task's: Table 1's binary queries erase
64 bits (each erased bit counts as wrong: 64), and for the image tasks the passthrough medians of
results/fig3/fig3.csv (CIFAR-10 46.20, Omniglot 256). Each curve's task comes from the records in the
`runs` folder beside its `training` folder (the record's training.checkpoint_key names the curve's file); a
curve no record names (a stopped or diverged run's) has the task of that folder's records where they all share
one. On the image tasks this is approximate: the guard divides by each batch's own unchanged error.

    python results/diagnostics/collapse/check_curves.py > results/diagnostics/collapse/check_curves.txt
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from membench.provenance import git_state
from membench.training import COLLAPSE_LOGS, COLLAPSED_SHARE, LEARNED_SHARE, CollapseGuard

UNCHANGED = {"binary": 64.0, "cifar10": 46.1999, "omniglot": 256.0}  # error of the queries returned unchanged


def kinds(training: Path) -> dict[str, str]:
    """Checkpoint key -> task kind, from the records beside `training`."""
    found = {}
    for path in sorted((training.parent / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        key = (record.get("training") or {}).get("checkpoint_key")
        if key:
            found[key] = record["task"]["kind"]
    return found


def stopped_at(curve: pd.DataFrame, unchanged: float) -> int | None:
    """The logged step at which the guard would have stopped this curve, or None."""
    guard = CollapseGuard()
    for step, error in zip(curve["step"], curve["error"]):
        if guard.seen(error, unchanged):
            return int(step)
    return None


def main() -> None:
    commit, dirty = git_state()
    print(f"commit {commit}{' (dirty)' if dirty else ''}; guard: {COLLAPSE_LOGS} logged updates in a row each at "
          f">= {COLLAPSED_SHARE} of the queries' own error, after {COLLAPSE_LOGS} in a row at <= {LEARNED_SHARE} of it "
          "on average")
    checked, skipped, stopped = 0, [], []
    for training in sorted(Path("results").rglob("training")):
        tasks = kinds(training)
        for path in sorted(training.glob("*.csv")):
            key = path.stem.removesuffix("-stopped").removesuffix("-diverged")
            kind = tasks.get(key, next(iter(set(tasks.values()))) if len(set(tasks.values())) == 1 else None)
            if kind not in UNCHANGED:
                skipped.append(str(path))
                continue
            checked += 1
            step = stopped_at(pd.read_csv(path), UNCHANGED[kind])
            if step is not None:
                stopped.append(f"{path} ({kind}): at step {step}")
    print(f"{checked} curves checked; stopped: {len(stopped)}")
    print("\n".join(stopped))
    print(f"{len(skipped)} curves without a task here" + "".join(f"\n{path}" for path in skipped))


if __name__ == "__main__":
    main()
