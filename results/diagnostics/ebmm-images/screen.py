"""Image EBMM recipes on the CPU: does the energy learn to fill the block, and which write/read settings let it?

    python results/diagnostics/ebmm-images/screen.py VARIANT [VARIANT ...] [--n 64] [--steps 1500]
        [--dataset omniglot] [--energy resnet_fc] [--units D] [--seed 0] [--queries 1024] [--data-dir DIR]
        [--out DIR]

Each variant is one run of the Figure 3 task (64 images by default; `--n` writes fewer): EBMM-FC at
d = 16 (4112 floats; `--energy resnet_conv`: EBMM-conv at d = 6, 3468 floats; `--units D`: D writable
units, the budget what they hold) on the quick preset's narrow networks, trained `--steps` updates on
the train split and evaluated on fresh test-split episodes. Records (and training curves) go to
results/diagnostics/ebmm-images/{runs,training} (or `--out`) through the runner, like any `membench run`;
the README there reads them.

`--continue-from S` trains further a run already trained S updates: where this run (`--steps`) has no
checkpoint yet, it starts from that run's (weights, optimiser and episode stream at update S), which should
give the same model as training `--steps` updates from scratch, since the quick preset's learning rate is
constant (not run side by side).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from membench.checkpoints import checkpoint_path, default_checkpoint_dir
from membench.datasets import set_data_dir
from membench.registry import make_task
from membench.run_identity import checkpoint_key
from membench.build import build_model
from membench.runner import run_all
from membench.store import write_atomic
from membench.run_spec import RunSpec

HERE = Path(__file__).resolve().parent
# energy -> (writable units d, floats): the quick EBMM-FC curve's first point (257 * 16) and the quick
# EBMM-conv curve's first (578 * 6: bottleneck 32)
POINTS = {"resnet_fc": (16, 4112), "resnet_conv": (6, 3468)}

# the linear centred memory units (options centre_memory, linear_memory; ours) with the write rate from 0.1
LINEAR = {"centre_memory": True, "linear_memory": True, "write_lr_init": 0.1}
# N grown from 2 to 64 (N drawn from the smallest 1 + 6 * update // 2000 entries: all of them from update 1667
# on; 64 listed thrice, so from then on half the updates store 64)
GROW = {"train.num_patterns": [2, 8, 32, 64, 64, 64], "train.curriculum_steps": 2000}

# name -> EBMM options beyond the quick image preset's (ebmm.config.IMAGE_PRESETS[energy]["quick"])
VARIANTS: dict[str, dict] = {
    "quick": {},                                                           # T = 1, no grad-norm, rates 1.0, lr 1e-3
    "keep-known": {"read_known": False},                                   # the read moves only the block
    "gpu-write": {"write_steps": 3, "write_lr_init": 0.3, "grad_norm_term": True},  # the gpu preset's write
    "gpu-lr": {"train.lr": 1e-4},                                # the gpu image preset's meta lr until 43e3941
    "keep-known-cos": {"read_known": False, "train.lr": 3e-3, "train.cosine_decay": True},
    "write3-norm": {"write_lr_init": 3.0, "learn_write_norm": True},       # a stronger write: rate and N's power
    "write10": {"write_lr_init": 10.0},                                    # a much stronger write
    "mixed-n": {"train.num_patterns": [4, 8, 16, 32, 64]},                 # trained on fewer images too
    "write0.01": {"write_lr_init": 0.01},      # a write that leaves the memory units unsaturated (probe.py)
    "write0.03": {"write_lr_init": 0.03},
    "centre": {"centre_memory": True, "write_lr_init": 0.1},  # the memory layer reads centred embeddings (ours)
    "centre-curriculum": {"centre_memory": True, "write_lr_init": 0.1,  # the same, trained from 1 image up
                          "train.num_patterns": [1, 2, 4, 8, 16, 32, 64], "train.curriculum_steps": 1000},
    "centre-linear": LINEAR,                                               # and units without tanh
    "centre-linear-write3": {**LINEAR, "write_steps": 3},                 # T = 3 write steps
    "centre-linear-write3-read8": {**LINEAR, "write_steps": 3, "read_steps": 8},  # and K = 8 read steps
    "centre-linear-grow": {**LINEAR, **GROW},
    "centre-linear-grow-write3": {**LINEAR, **GROW, "write_steps": 3},
    "centre-linear-grow-write3-read8": {**LINEAR, **GROW, "write_steps": 3, "read_steps": 8},
    "centre-linear-grow-write3-batch8": {**LINEAR, **GROW, "write_steps": 3,  # 8 episodes an update, not the
                                         "train.batch_size": 8},                 # quick preset's 2
    "centre-linear-grow-write3-elementwise": {**LINEAR, **GROW, "write_steps": 3,  # and each writable entry's
                                              "elementwise_write_lr": True},      # own learned rate factor
    # the paper's recurrent part and readout (App. B.2: hidden 512, three hops, readout 1024) on the quick encoder:
    # the d memory units are then 16 of 512 hidden units, not 16 of 128
    "centre-linear-grow-write3-hidden512": {**LINEAR, **GROW, "write_steps": 3, "hidden": 512, "hops": 3,
                                            "readout": 1024},
    # the paper's encoder (App. B.2: 32, 64, 96 channels) under the quick recurrent part and readout
    "centre-linear-grow-write3-encoder": {**LINEAR, **GROW, "write_steps": 3, "channels": [32, 64, 96]},
    # and the memory's centre kept near the embeddings' mean as the encoder trains (centre_tracking, ours)
    "centre-linear-grow-write3-encoder-track": {**LINEAR, **GROW, "write_steps": 3, "channels": [32, 64, 96],
                                                "centre_tracking": 0.1},
    "centre-linear-grow-write3-cos": {**LINEAR, **GROW, "write_steps": 3,  # the gpu preset's learning rate,
                                      "train.cosine_decay": True},           # decayed along a cosine
}


def continue_from(spec: RunSpec, steps: int) -> None:
    """Copy the checkpoint of `spec` trained `steps` updates to `spec`'s own key, unless that has one."""
    total = spec.options["train.steps"]
    if not 0 < steps < total:
        sys.exit(f"--continue-from {steps}: give a number of updates between 0 and --steps ({total}), exclusive")
    task = make_task(spec.task)
    model = build_model(spec, task)
    if model.preset.train.cosine_decay:
        sys.exit("--continue-from: the learning rate decays along a cosine over --steps, so a shorter run's "
                 "checkpoint is not a longer run's; train it from scratch")
    target = checkpoint_path(checkpoint_key(spec, model, task), default_checkpoint_dir())
    shorter = dataclasses.replace(spec, options={**spec.options, "train.steps": steps})
    source = checkpoint_path(checkpoint_key(shorter, build_model(shorter, task), task), default_checkpoint_dir())
    if not target.exists():
        if not source.exists():
            sys.exit(f"no checkpoint {source} of the run trained {steps} updates; run it first (--steps {steps})")
        write_atomic(target, lambda handle: handle.write(source.read_bytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--n", type=int, default=64, help="images written per episode")
    parser.add_argument("--steps", type=int, default=1500, help="meta-training updates")
    parser.add_argument("--dataset", default="omniglot", choices=("omniglot", "cifar10"))
    parser.add_argument("--energy", default="resnet_fc", choices=sorted(POINTS))
    parser.add_argument("--units", type=int, help="writable units d (default: the curve's first point's)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (initial weights, training and test episodes)")
    parser.add_argument("--queries", type=int, default=1024, help="test queries evaluated (whole episodes)")
    parser.add_argument("--data-dir", type=Path, default=HERE.parents[2].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE, help="records go to OUT/runs")
    parser.add_argument("--continue-from", type=int, metavar="S", help="start from the same run trained S updates")
    args = parser.parse_args()
    set_data_dir(args.data_dir)
    task = make_task({"kind": args.dataset, "num_patterns": args.n, "image_size": 32, "block": 16}).config()
    suite = "fig3-omniglot" if args.dataset == "omniglot" else "fig3-cifar"
    units, floats = POINTS[args.energy]
    if args.units is not None:
        if args.units < 1:
            sys.exit(f"--units {args.units}: give a positive number of writable units")
        units, floats = args.units, floats // units * args.units  # floats per unit: 257 (FC), 578 (conv)
    specs = [RunSpec(suite=suite, model="ebmm", task=task, budget=floats, seed=args.seed, queries=args.queries,
                     preset="quick", options={"energy": args.energy, "memory_size": units, "train.steps": args.steps,
                                              **VARIANTS[name]})
             for name in args.variants]
    if args.continue_from is not None:
        for spec in specs:
            continue_from(spec, args.continue_from)
    command = shlex.join(["python", "results/diagnostics/ebmm-images/screen.py", *sys.argv[1:]])
    for record in run_all(specs, args.out, device="cpu", command=command, progress=False):
        print(record["options"], "error", round(record["mean_error"], 2), "train s",
              record["training"]["train_time_s"], flush=True)


if __name__ == "__main__":
    main()
