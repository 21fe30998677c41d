"""Does image EBMM use its memory when its encoder cannot collapse, or when its write is not swamped by
what all embeddings share? The quick EBMM-FC trained with its encoder frozen at initialisation, or with its
memory layer reading centred embeddings, beside the same loop with neither.

    python results/diagnostics/ebmm-images/freeze.py [--freeze] [--centre] [--linear-memory] [--write-lr R]
        [--n 64] [--steps 1500] [--data-dir DIR]

The quick image preset's model and optimiser (`screen.py`'s `quick` variant: d = 16, 4112 floats), the
Figure 3 Omniglot task at N images an episode, `--steps` updates of 2 train-split episodes through
`membench.stepper.Stepper` (the runner's update); with `--freeze` the encoder's parameters get no
gradient (the rest of the energy, the write's and read's rates still train). With `--centre` (option
`centre_memory`, ours, not the paper's) the memory layer computes W (e - c) + b instead of W e + b, c a
static meta-learned vector started at the mean embedding of at least 512 training images (`EBMM.initialise`,
as the trainer does): the write's update W -= rate * g (e - c)^T then moves a query's memory units by its
centred embedding's agreement with the stored images', not by the large part that every embedding shares
(probe.py's "common" change). With `--linear-memory` (option `linear_memory`, ours) the memory units skip
the tanh, so training cannot switch the memory off by saturating them (probe.py's "past |2|"; the
linear-*.log runs were made at 6ab764d, when this script swapped in the same forward itself). `--write-lr` sets the initial write rate (the
quick preset's: 1.0). Then, on fresh test episodes (at least 1024 queries), the error per image of the
written read against the read of theta_bar (nothing written), the embeddings' cosines and the memory units'
change by the write (probe.py). Prints its command, commit and timings; the README quotes the logs
(freeze-*.log, centre-*.log).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from membench.datasets import set_data_dir
from membench.provenance import environment
from membench.registry import make_task
from membench.build import build_model
from membench.stepper import Stepper
from membench.run_spec import RunSpec
from membench.training import INIT_PATTERNS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import cosines, error, unit_shift, unwritten_memory  # noqa: E402  (this folder's probe)

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", action="store_true", help="keep the encoder at its initial weights")
    parser.add_argument("--centre", action="store_true", help="the memory layer reads centred embeddings")
    parser.add_argument("--linear-memory", action="store_true", help="no tanh on the memory units")
    parser.add_argument("--write-lr", type=float, default=None, help="initial write rate (default: the preset's)")
    parser.add_argument("--n", type=int, default=64, help="images written per episode")
    parser.add_argument("--steps", type=int, default=1500, help="meta-training updates")
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2].parent / "shared" / "data")
    args = parser.parse_args()
    print(shlex.join(["python", "results/diagnostics/ebmm-images/freeze.py", *sys.argv[1:]]))
    print(json.dumps(environment(torch.device("cpu")), sort_keys=True))
    set_data_dir(args.data_dir)
    task_config = make_task({"kind": "omniglot", "num_patterns": args.n, "image_size": 32, "block": 16}).config()
    spec = RunSpec(suite="fig3-omniglot", model="ebmm", task=task_config, budget=4112, seed=0, queries=1024,
                   options={"energy": "resnet_fc", "memory_size": 16,
                            **({"centre_memory": True} if args.centre else {}),
                            **({"linear_memory": True} if args.linear_memory else {}),
                            **({} if args.write_lr is None else {"write_lr_init": args.write_lr})})
    task = make_task(task_config)
    torch.manual_seed(0)
    model = build_model(spec, task)
    if args.freeze:
        model.energy.encoder.requires_grad_(False)
    count = -(-INIT_PATTERNS // args.n)  # as many training patterns as the trainer's own initialise sees
    model.initialise(task.sample(count, torch.Generator().manual_seed(3), split="train").patterns)
    stepper = Stepper(model, model.preset.train, torch.device("cpu"))
    generator, started = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = task.sample(model.preset.train.batch_size, generator, split="train")
        loss = stepper.step(batch.patterns, batch.queries).loss
        if step % 250 == 0:
            print(f"update {step}: loss {loss.item():.1f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    episodes = max(16, -(-1024 // args.n))
    batch = task.sample(episodes, torch.Generator().manual_seed(1), split="test")
    block = batch.queries == task.spec.fill_value
    theta_bar = unwritten_memory(model, episodes)
    with torch.enable_grad():
        written = model.read(model.write(batch.patterns), batch.queries)
        unwritten = model.read(theta_bar, batch.queries)
    everywhere = torch.ones_like(block)
    print(f"test, {episodes * args.n} queries: written read {error(written, batch.patterns, everywhere, True):.2f} "
          f"wrong pixels ({error(written, batch.patterns, block, True):.2f} in the block); theta_bar's read "
          f"{error(unwritten, batch.patterns, everywhere, True):.2f} ({error(unwritten, batch.patterns, block, True):.2f}); "
          f"the query {error(batch.queries, batch.patterns, block, True):.2f} in the block")
    first = lambda x: x.flatten(0, 1)[:64]  # noqa: E731
    print(f"embeddings: {cosines(model.energy.encoder, first(batch.patterns), first(batch.queries))}")
    with torch.enable_grad():
        print(f"memory units: {unit_shift(model, theta_bar, model.write(batch.patterns), batch.queries)}")


if __name__ == "__main__":
    main()
