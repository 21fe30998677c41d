"""Does splitting the meta-batch into chunks (gradient accumulation: the same gradient) speed up an EBMM
quick update on the CPU (16 episodes, N = 64, compiled)? `python results/bench/chunked_update.py [ROUNDS]`."""
import statistics, sys, time
import torch
from membench.registry import make_task
from membench.build import build_model
from membench.provenance import git_state
from membench.run_spec import RunSpec

print(f"commit {git_state()[0]} dirty {git_state()[1]}; torch {torch.__version__}; threads {torch.get_num_threads()}")

torch.manual_seed(0)
task = make_task({"kind": "binary", "num_patterns": 64, "dim": 128, "erased": 64})
spec = RunSpec("t", "ebmm", task.config(), 8256, 0, 64, "quick")
model = build_model(spec, task)
loss_fn = torch.compile(model.meta_loss, dynamic=True)
g = torch.Generator().manual_seed(0)
B = 16
ep = task.sample(B, g, split="train")

def update(chunks):
    model.zero_grad(set_to_none=True)
    size = B // chunks
    for c in range(chunks):
        p, q = ep.patterns[c*size:(c+1)*size], ep.queries[c*size:(c+1)*size]
        loss, _ = loss_fn(p, q)
        (loss * (size / B)).backward()

grads = {}
for chunks in (1, 2, 4, 8):
    for _ in range(3):
        update(chunks)
    grads[chunks] = [p.grad.clone() for p in model.parameters()]
for chunks in (2, 4, 8):
    err = max((a - b).abs().max().item() / (a.abs().max().item() + 1e-12) for a, b in zip(grads[1], grads[chunks]))
    print(f"chunks {chunks}: max relative gradient difference {err:.2e}")
times = {c: [] for c in (1, 2, 4, 8)}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for chunks in times:
        t = time.perf_counter()
        for _ in range(10):
            update(chunks)
        times[chunks].append((time.perf_counter() - t) / 10 * 1000)
for chunks, ts in times.items():
    print(f"chunks {chunks}: median {statistics.median(ts):.1f} ms per update of {B} episodes ({[round(x,1) for x in ts]})")
