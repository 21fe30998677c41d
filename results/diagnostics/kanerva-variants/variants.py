import torch, time, random
from baselines.kanerva_machine import KanervaMachine
from membench.tasks import BinaryTask
from membench.budget import TABLE1_BUDGET
tasks={n:BinaryTask(n) for n in (16,32,48,64,96)}
for opts in [dict(num_slots=128), dict(num_slots=32), dict(num_slots=64, hidden=512), dict(num_slots=64, lr=3e-3)]:
    torch.manual_seed(0); random.seed(0)
    lr = opts.pop("lr", 1e-3)
    m = KanervaMachine.from_spec(tasks[16].spec, TABLE1_BUDGET, "quick", **opts)
    opt=torch.optim.AdamW(m.parameters(),lr, weight_decay=1e-6)
    g=torch.Generator().manual_seed(0); t0=time.time()
    for i in range(1,1501):
        n=random.choice(list(tasks)); ep=tasks[n].sample(16,g,"train")
        loss,_=m.meta_loss(ep.patterns, ep.queries); opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    with torch.no_grad():
        errs=[]
        for n,t in tasks.items():
            e=t.sample(32,torch.Generator().manual_seed(1))
            errs.append(t.errors(m.read(m.write(e.patterns),e.queries),e.patterns).mean().item())
    print(opts, lr, round(time.time()-t0), [round(x,2) for x in errs], flush=True)
