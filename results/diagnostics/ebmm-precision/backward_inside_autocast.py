"""Do the committed bf16 rows (66822fd: the meta-loss's backward ran inside autocast) stand for today's
stepper (the backward outside autocast, in the dtypes of its forward)?

    python results/diagnostics/ebmm-precision/backward_inside_autocast.py

Three bf16 updates of EBMM quick (16 episodes, N = 64), eager and compiled, by today's `Stepper` and
by the same update with its backward inside autocast; prints the largest parameter difference.
"""
from __future__ import annotations

import dataclasses
import types

import torch

from membench.budget import TABLE1_BUDGET
from membench.registry import make_task
from membench.build import build_model
from membench.stepper import Stepper
from membench.run_spec import RunSpec


def _backward_inside(self, patterns, queries):
    """66822fd's update: the meta-loss and its backward both inside autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, retrievals = (self._compiled or self.model.meta_loss)(patterns, queries)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
    self.optimizer.step()


def trained(compile_: bool, inside: bool) -> dict[str, torch.Tensor]:
    task = make_task({"kind": "binary", "num_patterns": 64, "dim": 128, "erased": 64})
    spec = RunSpec("check", "ebmm", task.config(), TABLE1_BUDGET, 0, 64, "quick")
    torch.manual_seed(0)
    model = build_model(spec, task)
    stepper = Stepper(model, dataclasses.replace(model.preset.train, precision="bf16", compile=compile_),
                      torch.device("cpu"))
    update = types.MethodType(_backward_inside, stepper) if inside else stepper.step
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = task.sample(16, generator, split="train")
        update(batch.patterns, batch.queries)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


for compile_ in (False, True):
    today, before = trained(compile_, inside=False), trained(compile_, inside=True)
    gap = max((today[name] - before[name]).abs().max().item() for name in today)
    print(f"{'compiled' if compile_ else 'eager'}: largest parameter difference after 3 updates {gap:.3g}")
