"""Hebb rule on D random units, D/2 erased, budget D(D+1)/2: error bits at N = 8, 12, 16, 32 (100 episodes each).

What a 90 x 90 Hebbian trace could hold at best on random patterns, beside the 128-unit rule of Table 1.
"""
import torch
from membench.registry import resolve_model
from membench.tasks import BinaryTask
torch.manual_seed(0)  # the asynchronous update order
for dim in (90, 128):
    for name in ("hopfield_hebb",):
        row=[]
        for n in (8, 12, 16, 32):
            t = BinaryTask(n, dim=dim, erased=dim // 2)
            m = resolve_model(name).from_spec(t.spec, dim*(dim+1)//2)
            errs=[]
            g=torch.Generator().manual_seed(0)
            for _ in range(10):
                e=t.sample(10,g)
                with torch.no_grad(): errs.append(t.errors(m.read(m.write(e.patterns),e.queries),e.patterns))
            row.append(round(torch.cat([x.flatten() for x in errs]).mean().item(),2))
        print(dim, name, row)
