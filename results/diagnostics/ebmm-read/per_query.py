"""How EBMM's Table 1 error is spread over the queries, measured on a preset's shipped checkpoint.

    python results/diagnostics/ebmm-read/per_query.py [PRESET [KEY=VALUE ...]] > results/diagnostics/ebmm-read/per_query_PRESET.txt

PRESET and KEY=VALUE as in read_errors.py. For each N, on 3072 / N fresh test episodes (generator seed 123, as
read_errors.py), every stored pattern queried twice, with two independent erasures of 64 bits:
- the share of queries read back exactly, with 1-8 wrong bits, 9-24, and 25 or more (chance on the erased
  half is 32), and the share of the error each group carries;
- of the queries with 25 or more wrong bits, the share whose retrieval lies within 8 bits of another pattern
  stored in the same episode (the read fell into another memory) rather than away from all of them (a
  spurious state);
- whether failing is the pattern's or the query's: of the patterns whose first query fails (9 or more wrong
  bits), the share whose second query fails too, against the share of all second queries that fail;
- the slot ceiling: the error a memory that keeps min(N, 64) of the N patterns exactly and answers the rest at
  chance on the erased half would make, (N - 64) / N * 32 (64 whole patterns are what 8256 floats hold at one
  float a bit).
"""
from __future__ import annotations

import sys

import torch

from checkpoint import NUM_PATTERNS, episodes, header, trained
from membench.cli_common import parse_options

torch.set_num_threads(1)
SLOTS = 64  # 128-bit patterns held whole, one float a bit, in 8256 floats
GROUPS = ((0, 0), (1, 8), (9, 24), (25, 128))  # wrong bits, inclusive


def second_queries(patterns: torch.Tensor, erased: int, generator: torch.Generator) -> torch.Tensor:
    """Each pattern (B, N, D) with another `erased` random positions set to 0.5."""
    order = torch.rand(patterns.shape, generator=generator).argsort(dim=-1)
    mask = torch.zeros(patterns.shape, dtype=torch.bool).scatter_(-1, order[..., :erased], True)
    return patterns.masked_fill(mask, 0.5)


def main(preset: str, options: dict) -> None:
    print(header(preset, options))
    print("per N: share of queries [share of the error] with 0 | 1-8 | 9-24 | >= 25 wrong bits; mean error; "
          "slot ceiling")
    for n in NUM_PATTERNS:
        task, model, _ = trained(preset, options, n)
        sample = episodes(task, n)
        patterns = sample.patterns                                     # (B, N, 128)
        state = model.write(patterns)
        first = model.read(state, sample.queries)
        second = model.read(state, second_queries(patterns, task.erased, torch.Generator().manual_seed(456)))
        wrong = [task.errors(x, patterns) for x in (first, second)]   # (B, N) each
        errors = torch.cat([w.flatten() for w in wrong])
        shares = []
        for low, high in GROUPS:
            inside = (errors >= low) & (errors <= high)
            shares.append(f"{inside.float().mean().item():.3f} [{errors[inside].sum().item() / errors.sum().clamp(min=1).item():.2f}]")
        ceiling = max(n - SLOTS, 0) / n * task.erased / 2
        print(f"\nN = {n}: {' | '.join(shares)}; mean {errors.mean().item():.2f}; slot ceiling {ceiling:.2f}")

        bits = (first >= 0.5).float()                                  # (B, N, 128) read of the first queries
        distance = (bits.unsqueeze(2) - patterns.unsqueeze(1)).abs().sum(-1)  # (B, N, N): read i to pattern j
        own = torch.eye(n, dtype=torch.bool).expand_as(distance)
        other = distance.masked_fill(own, float("inf")).min(-1).values  # (B, N) nearest other stored pattern
        failed = wrong[0] >= 25
        if failed.any():
            print(f"  of the {int(failed.sum())} first queries with >= 25 wrong bits, "
                  f"{(other[failed] <= 8).float().mean().item():.3f} read within 8 bits of another stored pattern "
                  f"(median distance to the nearest other {other[failed].median().item():.0f})")
        fail_first, fail_second = wrong[0] >= 9, wrong[1] >= 9
        if fail_first.any():
            print(f"  second query fails (>= 9 wrong bits) for {fail_second[fail_first].float().mean().item():.3f} "
                  f"of the {int(fail_first.sum())} patterns whose first query fails, "
                  f"{fail_second.float().mean().item():.3f} of all patterns")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick", parse_options(None, None, tuple(sys.argv[2:])))
