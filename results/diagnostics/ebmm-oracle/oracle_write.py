"""How much a better write could give EBMM's trained Table 1 energy: its memory optimised per episode.

    python results/diagnostics/ebmm-oracle/oracle_write.py PRESET N [EPISODES] [STEPS] [LR] [KEY=VALUE ...] > results/diagnostics/ebmm-oracle/PRESET_nN.txt

PRESET: quick or gpu (the shipped checkpoint; gpu is the paused one), evaluated here on the CPU in float32;
KEY=VALUE: a screen's options (as `membench run --option`), its checkpoint found in the cache.
For EPISODES fresh test episodes of N patterns (generator seed 123, as ../ebmm-read), the writable tensors
(the memory, 8256 floats) are taken from the learned write and then optimised directly, per episode, by Adam
on the model's own step-wise read loss (its meta-training loss, the energy's static weights and the read's
step sizes fixed), each Adam step on erasures it draws itself (new random erasures of the stored patterns, its
own generator). Every few steps the error is measured on held-out queries (other erasures, drawn once, never
in the loss). A very slow write rule, not a meta-learned one: it shows an error this trained energy and read
can reach (at least this low), so if the optimised memory errs far less than the learned write, the write is
much of what limits the row.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ebmm-read"))
from checkpoint import header, trained  # noqa: E402

torch.set_num_threads(2)
HELD_OUT = 2   # held-out queries per pattern
EVERY = 50     # Adam steps between evaluations


def erase(patterns: torch.Tensor, erased: int, generator: torch.Generator) -> torch.Tensor:
    """patterns (B, N, D) in {0, 1} -> queries with `erased` random entries per pattern set to 0.5."""
    order = torch.rand(patterns.shape, generator=generator).argsort(-1)
    mask = torch.zeros(patterns.shape, dtype=torch.bool).scatter_(-1, order[..., :erased], True)
    return patterns.masked_fill(mask, 0.5)


def held_out_bits(model, theta: dict, patterns: torch.Tensor, queries: list[torch.Tensor]) -> float:
    """Mean wrong bits per query of the model's read under memory theta, over the held-out query sets."""
    with torch.no_grad():
        wrong = [((model.read(theta, q) - patterns).abs() >= 0.5).sum(-1).float().mean() for q in queries]
    return torch.stack(wrong).mean().item()


def main(preset: str, n: int, episodes: int, steps: int, lr: float, options: dict) -> None:
    print(header(preset, options))
    task, model, path = trained(preset, options, n)
    model.requires_grad_(False)
    patterns = task.sample(episodes, torch.Generator().manual_seed(123)).patterns   # (B, N, 128)
    erased = task.erased
    held_out = [erase(patterns, erased, torch.Generator().manual_seed(1000 + i)) for i in range(HELD_OUT)]
    fresh = torch.Generator().manual_seed(7)
    with torch.no_grad():
        written = model.write(patterns)
        initial = {name: t.unsqueeze(0).expand_as(written[name]).clone()
                   for name, t in model.energy.named_parameters() if name in written}
    print(f"{path.name}: N = {n}, {episodes} episodes, {HELD_OUT} held-out queries per pattern, "
          f"Adam lr {lr} on the memory's {sum(t[0].numel() for t in written.values())} floats per episode")
    print(f"memory tensors {list(written)}: RMS of the learned write's entries "
          f"{[round(t.pow(2).mean().sqrt().item(), 4) for t in written.values()]}, of its change from theta_bar "
          f"{[round((written[k] - initial[k]).pow(2).mean().sqrt().item(), 4) for k in written]}")
    print(f"no write (theta_bar): {held_out_bits(model, initial, patterns, held_out):.2f} bits; "
          f"learned write: {held_out_bits(model, written, patterns, held_out):.2f} bits")
    theta = {name: t.clone().requires_grad_(True) for name, t in written.items()}
    optimiser = torch.optim.Adam(theta.values(), lr=lr)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        queries = erase(patterns, erased, fresh)
        iterates = model._read(theta, queries, create_graph=True)
        loss = sum((patterns - x).pow(2).sum(-1).mean() for x in iterates)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % EVERY == 0 or step == steps:
            change = [round((theta[k].detach() - written[k]).pow(2).mean().sqrt().item(), 4) for k in theta]
            print(f"Adam step {step}: training loss {loss.item():.3f}, held-out {held_out_bits(model, theta, patterns, held_out):.2f} "
                  f"bits; RMS change from the learned write {change} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    from membench.cli_common import parse_options

    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8,
         int(sys.argv[4]) if len(sys.argv) > 4 else 1000, float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3,
         parse_options(None, None, tuple(sys.argv[6:])))
