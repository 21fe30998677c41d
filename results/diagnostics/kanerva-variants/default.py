import torch, time, random
from baselines.kanerva_machine import KanervaMachine
from membench.tasks import BinaryTask
from membench.budget import TABLE1_BUDGET
torch.manual_seed(0); random.seed(0)
tasks={n:BinaryTask(n) for n in (16,32,48,64,96)}
m = KanervaMachine.from_spec(tasks[16].spec, TABLE1_BUDGET, "quick")
opt=torch.optim.AdamW(m.parameters(),1e-3, weight_decay=1e-6)
g=torch.Generator().manual_seed(0)
t0=time.time()
for i in range(1,1501):
    n=random.choice(list(tasks)); ep=tasks[n].sample(16,g,"train")
    loss,_=m.meta_loss(ep.patterns, ep.queries); opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    if i%300==0:
        with torch.no_grad():
            errs=[]
            for n,t in tasks.items():
                e=t.sample(32,torch.Generator().manual_seed(1))
                errs.append(t.errors(m.read(m.write(e.patterns),e.queries),e.patterns).mean().item())
        print(i, round(time.time()-t0), [round(x,2) for x in errs], "noise", m.log_noise_variance.exp().item(), flush=True)
