"""`python -m membench.graph_check`: do updates replayed from CUDA graphs equal eager ones on this machine?

Small EBMMs (the gated-RNN energy on 128-bit patterns, both image energies), or with `--baselines` the
learned baselines that GPU sessions train (their gpu presets on 128-bit patterns), or the cases named
(`python -m membench.graph_check mann dnc`: the sessions name what they train; `mann_images` and
`memory_networks_images`, the image gpu presets Figure 3's sessions train, on small images), make
five AdamW updates on batches of two shapes, so two graphs share the stepper's one memory pool and
replay in turn; the weights after the five must equal those of the same updates run eagerly (float32,
torch.testing's tolerances: replayed updates round a little differently, capturable AdamW dividing where the
eager one multiplies), and so must each update's loss, finite flag and retrievals (to 1e-4, OUTPUT_TOLERANCE),
and a graph must really have been captured. Where a case differs, the last line names its models ("graphs off
for: mann dnc"). GPU sessions run it first (`make gpu-graph-check`) and train those models without graphs
(MEMBENCH_CUDA_GRAPHS_OFF), or every model (MEMBENCH_CUDA_GRAPHS=0) where it cannot run. Needs no pytest.
Exit status: 0 equal, 1 different or not captured, 2 no CUDA device here, 3 cases named wrongly (an unknown
one, or --baselines beside names).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch

from membench.budget import TABLE1_BUDGET
from membench.errors import MembenchError
from membench.interface import TaskSpec, TrainConfig
from membench.stepper import GRAPHS_ENV, GRAPHS_OFF_ENV, Stepper
from membench.training import learning_rate

# An update's outputs (retrievals after several read steps, the loss) amplify the weights' rounding: compared to
# 1e-4, far inside what a stale or wrong output would differ by, so rounding does not turn a model's graphs off.
OUTPUT_TOLERANCE = dict(rtol=1e-4, atol=1e-4)
BINARY = TaskSpec(pattern_shape=(128,), num_patterns=8, binary=True)
IMAGE = TaskSpec(pattern_shape=(3, 16, 16), num_patterns=4, binary=False)
CASES: dict[str, tuple[TaskSpec, str, dict]] = {  # name -> (task, model, options: small quick-preset EBMMs)
    "gated_rnn": (BINARY, "ebmm", dict(hidden=80, hops=2, read_steps=3, write_steps=2, write_momentum=None)),
    "gated_rnn_momentum": (BINARY, "ebmm", dict(hidden=80, hops=2, read_steps=3, write_steps=3, write_momentum=0.3)),
    "gated_rnn_contrast": (BINARY, "ebmm", dict(hidden=80, hops=2, read_steps=3, write_steps=2, contrast_steps=1,
                                                write_momentum=None)),
    "resnet_fc": (IMAGE, "ebmm", dict(energy="resnet_fc", channels=(4, 8, 8), embedding=32, hidden=24, hops=2,
                                      readout=16, memory_size=6)),
    "resnet_conv": (IMAGE, "ebmm", dict(energy="resnet_conv", channels=(4, 8), width=16, bottleneck=8, hidden=8,
                                        hops=2, readout=16, memory_size=3)),
}
BASELINE_CASES: dict[str, tuple[TaskSpec, str, dict]] = {  # the learned baselines whose gpu presets GPU sessions
    name: (BINARY, name, {}) for name in ("mann", "differentiable_plasticity", "dnc", "kanerva_machine")}  # train
IMAGE_BASELINE_CASES: dict[str, tuple[TaskSpec, str, dict]] = {  # their image gpu presets (the shared codec), which
    f"{name}_images": (IMAGE, name, {}) for name in ("mann", "memory_networks")}  # Figure 3's sessions train


def _batch(spec: TaskSpec, num_patterns: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(patterns, queries) of two episodes: binary patterns with half their bits erased (0.5), or images
    with a centre block set to 0.5."""
    if spec.binary:
        patterns = torch.randint(0, 2, (2, num_patterns, *spec.pattern_shape), generator=generator).float()
        erased = torch.rand(patterns.shape, generator=generator) < 0.5
        return patterns, patterns.masked_fill(erased, 0.5)
    patterns = torch.rand(2, num_patterns, *spec.pattern_shape, generator=generator)
    queries = patterns.clone()
    queries[..., 4:12, 4:12] = 0.5
    return patterns, queries


def updated(name: str, device: torch.device, graphs: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Case `name`'s five updates (N alternating between the task's and half of it; the learning rate warmed up
    over two and decayed along a cosine, set before each as training sets it, so a rate baked into a graph would
    show): what each returned (its loss, finite flag and retrievals) and the weights after them, by name; and
    how many graphs the stepper captured."""
    from membench.registry import resolve_model

    spec, model_name, options = {**CASES, **BASELINE_CASES, **IMAGE_BASELINE_CASES}[name]
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    budget = 10**6 if model_name == "ebmm" else TABLE1_BUDGET  # Table 1's baselines as they train (images: a
    # Figure 3 size)
    model = resolve_model(model_name).from_spec(spec, budget, "quick" if options else "gpu", **options).to(device)
    config = TrainConfig(steps=5, lr=1e-3, clip_norm=1.0, cosine_decay=True, warmup_steps=2, cuda_graph=graphs)
    stepper = Stepper(model, config, device)
    seen = {}
    for step, num_patterns in enumerate([spec.num_patterns, spec.num_patterns // 2] * 2 + [spec.num_patterns], 1):
        stepper.set_lr(learning_rate(config, step - 1))
        patterns, queries = _batch(spec, num_patterns, generator)
        out = stepper.step(patterns.to(device), queries.to(device))  # replayed outputs hold until the next step
        seen.update({f"update {step} {key}": value.detach().cpu().clone()
                     for key, value in (("loss", out.loss), ("finite", out.finite), ("retrievals", out.retrievals))})
    seen.update({key: value.detach().cpu().clone() for key, value in model.state_dict().items()})
    return seen, len(stepper._graphs)


def mismatches(device: torch.device, run: Callable = updated, cases: dict = CASES) -> list[str]:
    """What differs between replayed and eager updates on `device`: one line per case of `cases` that did,
    starting with the case's name and a colon."""
    found = []
    for name in cases:
        (eager, _), (replayed, captured) = run(name, device, False), run(name, device, True)
        if device.type == "cuda" and captured != 2:
            found.append(f"{name}: {captured} graphs captured, 2 expected (capture failed: see the warning above)")
        for key in eager:
            tolerance = OUTPUT_TOLERANCE if key.startswith("update ") else {}  # else torch.testing's float32 ones
            try:
                torch.testing.assert_close(replayed[key], eager[key], **tolerance)
            except AssertionError as exc:
                found.append(f"{name}: {key} differs ({str(exc).splitlines()[0]})")
                break
    return found


def chosen_cases(args: list[str]) -> dict[str, tuple[TaskSpec, str, dict]]:
    """The cases `args` name: none, EBMM's (CASES); `--baselines`, BASELINE_CASES; otherwise the cases named.
    MembenchError naming an unknown one."""
    if not args:
        return CASES
    if args == ["--baselines"]:
        return BASELINE_CASES
    known = {**CASES, **BASELINE_CASES, **IMAGE_BASELINE_CASES}
    if "--baselines" in args:
        raise MembenchError("graph check: --baselines names the baselines' cases itself; give it alone, or case "
                            f"names among {', '.join(known)}")
    unknown = [name for name in args if name not in known]
    if unknown:
        raise MembenchError(f"graph check: unknown case {', '.join(unknown)}; give --baselines or case names "
                            f"among {', '.join(known)}")
    return {name: known[name] for name in args}


def main(args: list[str] | None = None) -> int:
    """Check the cases `args` name (`chosen_cases`; None: the command line's) and print one line; the exit status."""
    try:
        cases = chosen_cases(sys.argv[1:] if args is None else args)
    except MembenchError as exc:
        print(exc)
        return 3
    if not torch.cuda.is_available():
        print("graph check: no CUDA device here; nothing to check")
        return 2
    for name in (GRAPHS_ENV, GRAPHS_OFF_ENV):  # the check itself replays graphs whatever a session was told
        os.environ.pop(name, None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    found = mismatches(torch.device("cuda"), cases=cases)
    print("graph check: " + ("; ".join(found) if found else f"replayed updates equal eager ones ({', '.join(cases)})"))
    if found:
        print("graphs off for: " + " ".join(off_models(found, cases)))
    return 1 if found else 0


def off_models(found: list[str], cases: dict) -> list[str]:
    """The models of the cases whose lines `mismatches` gave, once each in the cases' order (EBMM's
    cases are one model: a difference in any turns its graphs off)."""
    failed = {line.split(":")[0] for line in found}
    return list(dict.fromkeys(model for name, (_, model, _) in cases.items() if name in failed))


if __name__ == "__main__":
    sys.exit(main())
