"""What a trained image EBMM's read does to the block, per read iterate.

    python results/diagnostics/ebmm-images/probe.py [RECORD.json ...]   (default: every record in runs/)

For each record (its checkpoint from the cache): 8 fresh test-split episodes; per read iterate x^(k),
the wrong pixels inside the 16x16 block and outside it, and how far the block's pixels moved from the
fill value 0.5 (mean |x - 0.5|); beside them two readings no memory is needed for: the block filled
with 0 (Omniglot's background) and the query itself, and the read of a memory written with no image (its
meta-learned theta_bar: what the energy's prior alone fills in).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from membench.datasets import set_data_dir
from membench.runner import load_trained
from membench.checkpoints import default_checkpoint_dir
from membench.suites import RunSpec

HERE = Path(__file__).resolve().parent
EPISODES = 8


def wrong(x: torch.Tensor, patterns: torch.Tensor, where: torch.Tensor) -> float:
    """Mean wrong pixels per image (x thresholded at 0.5) counted where `where` is True."""
    return (((x > 0.5) != (patterns > 0.5)) & where).flatten(2).sum(-1).float().mean().item()


def main() -> None:
    set_data_dir(HERE.parents[2].parent / "shared" / "data")
    paths = [Path(p) for p in sys.argv[1:]] or sorted((HERE / "runs").glob("*.json"))
    for path in paths:
        record = json.loads(path.read_text())
        spec = RunSpec(**{k: record[k] for k in ("suite", "model", "task", "budget", "seed", "queries", "preset",
                                                  "options")})
        task, model, checkpoint = load_trained(spec, default_checkpoint_dir())
        if checkpoint is None:
            print(f"{path.name}: no checkpoint in the cache; skipped")
            continue
        batch = task.sample(EPISODES, torch.Generator().manual_seed(1), split="test")
        block = batch.queries == task.spec.fill_value                            # (B, N, 1, H, W)
        with torch.enable_grad():
            iterates = model._read(model.write(batch.patterns), batch.queries, create_graph=False)
            params = dict(model.energy.named_parameters())
            theta_bar = {n: params[n].detach().expand(EPISODES, *params[n].shape) for n in model.writable_names}
            unwritten = model._read(theta_bar, batch.queries, create_graph=False)[-1]
        print(f"{path.name} {record['options']} (recorded error {record['mean_error']:.2f})")
        filled = batch.queries.masked_fill(block, 0.0)
        print(f"  block filled with 0: {wrong(filled, batch.patterns, block):.2f} wrong in the block; "
              f"the query: {wrong(batch.queries, batch.patterns, block):.2f}; read with nothing written (theta_bar): "
              f"{wrong(unwritten, batch.patterns, block):.2f}")
        for k, x in enumerate(iterates, 1):
            moved = ((x - 0.5).abs() * block).flatten(2).sum(-1).mean().item() / block.flatten(2).sum(-1).float().mean().item()
            print(f"  x^({k}): {wrong(x, batch.patterns, block):6.2f} wrong in the block, "
                  f"{wrong(x, batch.patterns, ~block):5.2f} outside; block moved {moved:.3f} from 0.5")


if __name__ == "__main__":
    main()
