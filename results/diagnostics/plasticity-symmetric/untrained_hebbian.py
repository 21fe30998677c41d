"""The plasticity model untrained, its weights at a Hebbian start (`hebbian_init`): what the architecture holds
before meta-training. Table 1's task and budget (symmetric trace, 128 units), 64 episodes per cell, episode seed 1.

    python results/diagnostics/plasticity-symmetric/untrained_hebbian.py > results/diagnostics/plasticity-symmetric/untrained_hebbian.log

First the screen HEBBIAN_START was chosen from (N = 16 and 96 for each start), then the chosen start at every N.
"""
import itertools

import torch

from baselines import plasticity
from membench.budget import TABLE1_BUDGET
from membench.tasks import BinaryTask


def error(num_patterns: int) -> float:
    task = BinaryTask(num_patterns)
    model = plasticity.DifferentiablePlasticity.from_spec(task.spec, TABLE1_BUDGET, hebbian_init=True)
    episodes = task.sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        retrievals = model.read(model.write(episodes.patterns), episodes.queries)
    return task.errors(retrievals, episodes.patterns).mean().item()


chosen = dict(plasticity.HEBBIAN_START)
print("a c eta d: error bits at N = 16, 96")
for a, c, eta in itertools.product((1.0, 4.0, 8.0), (0.01, 0.03, 0.1, 0.3, 1.0, 3.0), (0.001, 0.003, 0.01, 0.05)):
    plasticity.HEBBIAN_START.update(a=a, c=c, eta=eta, d=4.0)
    print(f"{a:g} {c:g} {eta:g} 4: {error(16):.2f}, {error(96):.2f}")
plasticity.HEBBIAN_START.update(chosen)
print("HEBBIAN_START", chosen)
for n in (16, 32, 48, 64, 96):
    print(f"N = {n}: {error(n):.2f}")
