"""Compare the records a fresh clone's `make table1` made with the committed ones.

    python results/diagnostics/fresh-clone/compare.py <fresh clone>/results/table1/runs results/table1/runs

Prints, per record of the committed folder, whether the fresh clone made it with the same errors (every
per-query error, not only the mean), and a summary line.
"""
from __future__ import annotations

import sys
from pathlib import Path

from membench.records import read_record

fresh_dir, committed_dir = map(Path, sys.argv[1:3])
same, differ, missing = [], [], []
for path in sorted(committed_dir.glob("*.json")):
    committed = read_record(path)
    fresh = fresh_dir / path.name
    if not fresh.exists():
        missing.append(f"{path.name} ({committed['environment']['device']})")
        continue
    made = read_record(fresh)
    (same if made["errors"] == committed["errors"] else differ).append(
        f"{path.name}: {committed['mean_error']:.4f} committed, {made['mean_error']:.4f} fresh")
for line in differ:
    print("differs:", line)
for line in missing:
    print("not made:", line)
print(f"{len(same)} of {len(same) + len(differ) + len(missing)} committed records identical (every error); "
      f"{len(differ)} differ; {len(missing)} not made")
