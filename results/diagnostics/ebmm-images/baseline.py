"""A learned baseline beside screen.py's EBMM runs: the same task, memory and training episodes.

    python results/diagnostics/ebmm-images/baseline.py MODEL [--budget 3468] [--steps 6000]
        [--dataset cifar10] [--n 64] [--seed 0] [--queries 1024] [--data-dir DIR] [--out DIR]
        [--option KEY=VALUE] [--continue-from S]

MODEL (memory_networks or mann) runs the Figure 3 task on its quick image preset (the quick
preset's narrow codec, 2 episodes an update, a constant learning rate) with `--steps` updates
instead of the preset's 1600, at `--budget` floats (default 3468: screen.py's EBMM-conv point,
so Memory Networks get 64 slots of 3468 // 64 = 54 values, 3456 floats; MANN, as on the Figure 3 curve,
64 slots as wide as fit beside its controller's h and c, 64 x 53 + 64 = 3456 floats). Evaluated on the same
fresh test-split episodes as screen.py's runs (same seed and queries), so their errors compare
directly (at the default seed). `--continue-from` as in screen.py.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import click

from membench.cli_common import parse_options
from membench.datasets import set_data_dir
from membench.registry import make_task
from membench.runner import run_all
from membench.run_spec import RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screen import HERE, continue_from  # noqa: E402  (the sibling script; not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("memory_networks", "mann"))
    parser.add_argument("--budget", type=int, default=3468, help="float32 memory budget")
    parser.add_argument("--steps", type=int, default=6000, help="meta-training updates (2 episodes each)")
    parser.add_argument("--dataset", default="cifar10", choices=("omniglot", "cifar10"))
    parser.add_argument("--n", type=int, default=64, help="images written per episode")
    parser.add_argument("--seed", type=int, default=0, help="run seed (initial weights, training and test episodes)")
    parser.add_argument("--queries", type=int, default=1024, help="test queries evaluated (whole episodes)")
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE, help="records go to OUT/runs")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model option beyond the preset's, e.g. init_scale=8.0 (value read as JSON)")
    parser.add_argument("--continue-from", type=int, metavar="S", help="start from the same run trained S updates")
    args = parser.parse_args()
    set_data_dir(args.data_dir)
    task = make_task({"kind": args.dataset, "num_patterns": args.n, "image_size": 32, "block": 16}).config()
    suite = "fig3-omniglot" if args.dataset == "omniglot" else "fig3-cifar"
    try:
        options = {"train.steps": args.steps, **parse_options(None, None, tuple(args.option))}
    except click.BadParameter as exc:
        sys.exit(f"--option: {exc.message}")
    if args.model == "mann":  # 64 slots beside the quick preset's controller h and c (2 x 32), as on the Figure 3 curve
        options["memory_width"] = (args.budget - 2 * 32) // 64
    spec = RunSpec(suite=suite, model=args.model, task=task, budget=args.budget, seed=args.seed, queries=args.queries,
                   preset="quick", options=options)
    if args.continue_from is not None:
        continue_from(spec, args.continue_from)
    command = shlex.join(["python", "results/diagnostics/ebmm-images/baseline.py", *sys.argv[1:]])
    for record in run_all([spec], args.out, device="cpu", command=command, progress=False):
        print(args.model, "memory", record["memory_floats"], "error", round(record["mean_error"], 2), "train s",
              record["training"]["train_time_s"], flush=True)


if __name__ == "__main__":
    main()
