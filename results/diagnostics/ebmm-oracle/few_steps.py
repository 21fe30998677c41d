"""How much of the optimised memory's gain (oracle_write.py) a few plain denoising write steps reach, untrained.

    python results/diagnostics/ebmm-oracle/few_steps.py PRESET N [EPISODES] [DRAWS] > results/diagnostics/ebmm-oracle/few_steps_PRESET_nN.txt

On the same episodes and held-out queries as oracle_write.py, the learned write is followed by M plain gradient
steps, theta -= lr * g (plain) or lr * sign(g) (sign, Adam's first step), g = grad_theta sum_k mean_i ||x_i -
read^(k)(e_i)||^2 per episode, each step on DRAWS (default 1) fresh erased copies e_i of each stored pattern, the
gradient their mean (the write draws them: it sees no query), every read step scored as in meta-training. Nothing here is meta-trained: one learning rate for every writable tensor, from a grid, and the
held-out error after M = 1, 2, 4, ... 64 steps. A write option that meta-learns such steps is `denoise_steps`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_write import HELD_OUT, erase, header, held_out_bits, trained  # noqa: E402

torch.set_num_threads(2)
RATES = {"plain": (0.003, 0.01, 0.03, 0.1), "sign": (0.001, 0.003)}
CHECKS = (1, 2, 4, 8, 16, 32, 64)


def main(preset: str, n: int, episodes: int, draws: int) -> None:
    print(header(preset, {}))
    task, model, path = trained(preset, {}, n)
    model.requires_grad_(False)
    patterns = task.sample(episodes, torch.Generator().manual_seed(123)).patterns   # (B, N, 128)
    held_out = [erase(patterns, task.erased, torch.Generator().manual_seed(1000 + i)) for i in range(HELD_OUT)]
    with torch.no_grad():
        written = model.write(patterns)
    print(f"{path.name}: N = {n}, {episodes} episodes, {HELD_OUT} held-out queries per pattern, {draws} erased "
          f"copies of each pattern a step; learned write: "
          f"{held_out_bits(model, written, patterns, held_out):.2f} bits")
    print("held-out bits after M plain denoising steps; lr \\ M = " + " ".join(str(m) for m in CHECKS))
    for rule, lr in ((rule, lr) for rule, rates in RATES.items() for lr in rates):
        fresh = torch.Generator().manual_seed(7)  # the same erasures for every rate
        theta = {name: t.clone() for name, t in written.items()}
        row = []
        for step in range(1, CHECKS[-1] + 1):
            held = {name: t.requires_grad_(True) for name, t in theta.items()}
            loss = 0
            for _ in range(draws):  # the gradient averaged over `draws` erased copies of each pattern
                iterates = model._read(held, erase(patterns, task.erased, fresh), create_graph=True)
                loss = loss + sum((patterns - x).pow(2).sum(-1).mean(-1).sum() for x in iterates) / draws
            grads = torch.autograd.grad(loss, list(held.values()))
            theta = {name: (t - lr * (g.sign() if rule == "sign" else g)).detach()
                     for (name, t), g in zip(held.items(), grads)}
            if step in CHECKS:
                row.append(held_out_bits(model, theta, patterns, held_out))
        print(f"{rule} lr {lr}: " + " ".join(f"{bits:.2f}" for bits in row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8,
         int(sys.argv[4]) if len(sys.argv) > 4 else 1)
