"""Does a Hebbian start of the plasticity model survive meta-training's first updates? From two starts, 100 AdamW
updates at the quick preset's rate (2e-3, clipped at 1), 16 episodes each, N cycling through 16 ... 96; printed:
(update, N, meta-loss, error bits) for the first five and the last six updates.

    python results/diagnostics/plasticity-symmetric/start_robustness.py > results/diagnostics/plasticity-symmetric/start_robustness.log
"""
import torch

from baselines import plasticity
from membench.budget import TABLE1_BUDGET
from membench.tasks import BinaryTask

STARTS = {"erased units near 0 (a 4, c 0.03, eta 0.003, d 4)": {"a": 4.0, "c": 0.03, "eta": 0.003, "d": 4.0},
          "HEBBIAN_START": dict(plasticity.HEBBIAN_START)}
for name, start in STARTS.items():
    plasticity.HEBBIAN_START.update(start)
    torch.manual_seed(0)
    model = plasticity.DifferentiablePlasticity.from_spec(BinaryTask(16).spec, TABLE1_BUDGET, hebbian_init=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-6)
    episodes_seed, shown = torch.Generator().manual_seed(5), []
    for update in range(101):
        task = BinaryTask((16, 32, 48, 64, 96)[update % 5])
        episodes = task.sample(16, episodes_seed)
        loss, retrievals = model.meta_loss(episodes.patterns, episodes.queries)
        if update < 5 or update >= 95:
            shown.append((update, task.spec.num_patterns, round(loss.item(), 3),
                           round(task.errors(retrievals, episodes.patterns).mean().item(), 2)))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    print(f"{name} {start}:", *shown, sep="\n  ")
