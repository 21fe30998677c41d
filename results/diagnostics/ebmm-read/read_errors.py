"""Where EBMM's Table 1 errors come from, measured on a preset's shipped checkpoint (finished or paused).

    python results/diagnostics/ebmm-read/read_errors.py [PRESET [KEY=VALUE ...]] > results/diagnostics/ebmm-read/read_errors_PRESET.txt

PRESET: quick (the default) or gpu, evaluated here on the CPU in float32; KEY=VALUE: a screen's options (as
`membench run --option`), its checkpoint found in $MEMBENCH_CACHE/checkpoints or the shipped ones.

For each N, on 3072 / N fresh test episodes (generator seed 123, not the evaluation stream):
- the error split into erased and known bits;
- the error of reading from the stored pattern itself (is each written pattern a fixed point?);
- the error after each read step when reading goes on past the learned K steps, the last
  learned decays of the step size and momentum repeated ("repeat") or held at the last step's
  values ("hold");
- reading with the known bits clamped to the query after every step.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from checkpoint import NUM_PATTERNS, episodes, header, trained
from membench.cli_common import parse_options

torch.set_num_threads(1)


def read(model, state, queries: torch.Tensor, steps: int, schedule: str, clamp: bool = False) -> list[torch.Tensor]:
    """Projected Nesterov reading as EBMM._read, for `steps` steps; returns every iterate."""
    gamma, psi = F.softplus(model.read_step).item(), torch.sigmoid(model.momentum).item()
    gamma_decay = torch.sigmoid(model.read_step_decay).tolist()
    psi_decay = torch.sigmoid(model.momentum_decay).tolist()
    known = queries != 0.5
    x, velocity, iterates = queries, torch.zeros_like(queries), []
    for k in range(steps):
        lookahead = (x + psi * velocity).clamp(0, 1)
        with torch.enable_grad():
            grad = model._grad_x(state, lookahead, False).detach()
        velocity = psi * velocity - gamma * grad
        x = (x + velocity).clamp(0, 1)
        if clamp:
            x = torch.where(known, queries, x)
        iterates.append(x)
        if k < len(gamma_decay) or schedule == "repeat":
            i = min(k, len(gamma_decay) - 1)
            gamma, psi = gamma * gamma_decay[i], psi * psi_decay[i]
    return iterates


def main(preset: str, options: dict) -> None:
    print(header(preset, options))
    for n in NUM_PATTERNS:
        task, model, path = trained(preset, options, n)
        if n == NUM_PATTERNS[0]:
            steps = torch.load(path, weights_only=False, map_location="cpu")["step"]
            print(f"{path.name}: {steps} of {model.preset.train.steps} updates; K = {model.cfg.read_steps}")
        sample = episodes(task, n)
        patterns, queries = sample.patterns, sample.queries
        state = model.write(patterns)

        def bits(x: torch.Tensor, where: torch.Tensor | None = None) -> float:
            wrong = (x - patterns).abs() >= 0.5
            return (wrong if where is None else wrong & where).sum(-1).float().mean().item()

        retrieved = model.read(state, queries)
        erased = queries == 0.5
        print(f"\nN = {n}: error {bits(retrieved):.2f} bits = erased {bits(retrieved, erased):.2f} + known "
              f"{bits(retrieved, ~erased):.2f}; read from the stored pattern {bits(model.read(state, patterns)):.2f}; "
              f"known bits clamped {bits(read(model, state, queries, model.cfg.read_steps, 'hold', clamp=True)[-1]):.2f}")
        for schedule in ("repeat", "hold"):  # past the learned K steps
            errors = [bits(x) for x in read(model, state, queries, 12, schedule)]
            print(f"  error after read steps 1..12 ({schedule}): " + " ".join(f"{e:.2f}" for e in errors))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick", parse_options(None, None, tuple(sys.argv[2:])))
