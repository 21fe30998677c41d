"""One untrained EBMM image write and read at a preset's initial rates: usage  python write_at_init.py DATASET ENERGY D PRESET [EPISODES]
(from the repository root, MEMBENCH_DATA at the data). Prints each term's gradient on the writable tensors at theta_bar, how far the
write moves them, the energy of the stored images before and after the write (mean and spread over the images) and of
their queries after it, and the read's iterates (err: task.errors, where a block pixel left at 0.5 counts as wrong)."""
import sys, time, torch
from membench.registry import make_task, resolve_model
torch.set_num_threads(1); torch.manual_seed(0)
kind, energy, d, preset = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
B = int(sys.argv[5]) if len(sys.argv) > 5 else 1
task = make_task({"kind": kind, "num_patterns": 64, "image_size": 32, "block": 16})
EBMM = resolve_model("ebmm")
m = EBMM.from_spec(task.spec, 0, preset, energy=energy, memory_size=d)
print("cfg", {k: v for k, v in m.config().items() if k in ("write_steps","read_steps","write_lr_init","anchor_lr_init","grad_norm_lr_init","read_step_init","grad_norm_term","hops","hidden")})
print("train", m.preset.train)
ep = task.sample(B, torch.Generator().manual_seed(0), split="train")
P, Q = ep.patterns, ep.queries
theta_bar = {n: p.detach().clone() for n, p in m.energy.named_parameters() if n in m.writable_names}
# per-term gradient magnitude at theta_bar
theta = {n: t[None].expand(B, *t.shape).clone().requires_grad_(True) for n, t in theta_bar.items()}
t0 = time.time()
tg = m._term_grads(theta, P, None, create_graph=False)
for i, g in enumerate(tg):
    print("term", i, " ".join(f"{n}:|g|={x.norm():.3g}" for n, x in zip(m.writable_names, g)))
print("term grads s", round(time.time()-t0,1))
t0 = time.time()
st = m.write(P)
print("write s", round(time.time()-t0,1))
for n in m.writable_names:
    dlt = st[n][0] - theta_bar[n]
    print(f"{n}: |theta_bar|={theta_bar[n].norm():.3g} |delta|={dlt.norm():.3g} finite={torch.isfinite(st[n]).all().item()}")
with torch.no_grad():
    e0 = m.batched_energy({n: t[None].expand(B,*t.shape) for n,t in theta_bar.items()}, P)
    e1 = m.batched_energy(st, P); eq = m.batched_energy(st, Q)
print("E(P) theta_bar mean %.4g std %.4g | after write mean %.4g std %.4g | E(Q) after %.4g" % (e0.mean(), e0.std(), e1.mean(), e1.std(), eq.mean()))
if energy == "resnet_fc":
    with torch.no_grad():
        w = {n: st[n][0] for n in m.writable_names}
        code = m.energy.encoder(P[0])
        pre = code @ w["memory.weight"].T + w["memory.bias"]
        pre0 = code @ theta_bar["memory.weight"].T + theta_bar["memory.bias"]
        print("memory pre-activations: theta_bar |.|mean %.3g, after write %.3g, frac |tanh|>0.99: %.3f; spread over images (std over i) before %.3g after %.3g" % (pre0.abs().mean(), pre.abs().mean(), (torch.tanh(pre).abs()>0.99).float().mean(), pre0.std(0).mean(), pre.std(0).mean()))
g = m._grad_x(st, Q.clone(), False)
print("grad_x E on queries: per-image norm mean %.3g, max abs entry %.3g" % (g.flatten(2).norm(dim=-1).mean(), g.abs().max()))
t0=time.time()
its = m._read(st, Q, False)
print("read s", round(time.time()-t0,1))
for k, x in enumerate(its):
    print(f"iter {k+1}: mean|x-Q| {(x-Q).abs().mean():.4g}  err {task.errors(x, P).mean():.4g}")
print("query err (passthrough)", task.errors(Q, P).mean().item())
