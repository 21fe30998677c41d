"""EBMM's gpu preset's first updates on the CPU (batch 16, its lr, constant), error per N over windows."""
import sys, dataclasses, time, torch, pandas as pd
from membench.tasks import BinaryTask
from membench.budget import TABLE1_BUDGET
from membench.stepper import Stepper
from ebmm.config import PRESETS
from ebmm.memory import EBMM
steps = int(sys.argv[1]); opts = {k: float(v) for k, v in (a.split("=") for a in sys.argv[2:])}
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
m = EBMM.from_spec(BinaryTask(64).spec, TABLE1_BUDGET, "gpu", **opts)
cfg = dataclasses.replace(PRESETS["gpu"].train, batch_size=16, compile=True)
st = Stepper(m, cfg, torch.device("cpu"))
rows, t = [], time.time()
for i in range(steps):
    n = (16, 32, 48, 64, 96)[torch.randint(5, (1,), generator=g).item()]
    b = BinaryTask(n).sample(16, g, split="train")
    out = st.step(b.patterns, b.queries)
    rows.append(dict(step=i + 1, n=n, error=((out.retrievals > 0.5).float() != b.patterns).float().sum(-1).mean().item()))
    if (i + 1) % 250 == 0:
        d = pd.DataFrame(rows); w = d[d.step > i + 1 - 250]
        q = pd.read_csv("results/table1/training/ebmm-quick-823663ec0f4e.csv")  # the quick preset's run, logged every 50
        q = q[(q.step > i + 1 - 250) & (q.step <= i + 1)]
        print(i + 1, round(time.time() - t), "gpu@16", w.groupby("n").error.mean().round(2).tolist(),
              "quick", q.groupby("num_patterns").error.mean().round(2).tolist(), flush=True)
