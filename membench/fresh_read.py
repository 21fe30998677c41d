"""The fresh-process read: a model from outside membench reads its evaluated states again in a new interpreter.

Inside one process a model could keep what it writes beside the measured state, in a module-level
table keyed by the patterns' content or by a value its state carries, and no check there can tell.
A new interpreter has no such table: the runner rebuilds the model there from its run (the same seed,
so the same initial values) and its weights, gives it the kept states and queries of evaluated batches
of the run, and requires the retrievals the run scored (`check`): every read of such a model, in the run
and there, starts from seed 0, so a deterministic honest model reads the same, while a model whose
scored read drew on a table (or consumed it) does not. The batches are the first, the last and
AUDITED_AT_RANDOM others drawn from the operating system's entropy, which no model can foresee (`batches_to_audit`):
a model honest on some batches and not on others is caught too, while a Figure 3 point's 16 batches of
64 image episodes need not all be held for the check. The child gets the weights from before the evaluated
writes and the environment variables from before any run, so neither can carry what those writes stored.

The evaluated episodes themselves come from seeded generators, which a model could regenerate (from
`torch.initial_seed()`, say) and answer without storing anything, here and in the child alike. So the model
also writes and reads episodes drawn from the operating system's entropy, and must not err clearly more on
them than on the evaluated ones (`unforeseen_check`); the child reads them again too.

Built-in models are reviewed code and skip these checks (an interpreter start costs seconds); files on
disk stay open to a model, as the README says.

Run as `python -m membench.fresh_read FILE`: the child's side (`_child`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from membench.errors import MembenchError
from membench.interface import AssociativeMemory

TOLERANCE = 1e-5  # as the in-process checks: the same device and kernels, a new interpreter
ENVIRONMENT = dict(os.environ)  # the child's, as it was before any run (the runner imports this module first)
CHILD_TIMEOUT_S = 600
AUDITED_AT_RANDOM = 2  # batches read again besides the first and the last
UNFORESEEN_EPISODES = (16, 64)  # episodes drawn from the operating system's entropy after evaluation: as many as
#   were evaluated, within these bounds
UNFORESEEN_SIGMAS = 6.0  # how many standard errors worse than evaluated an honest model does not err on them
UNFORESEEN_SLACK = 0.05  # ... nor by this share of returning the queries unchanged (for errors with no spread)


def batches_to_audit(count: int) -> set[int]:
    """Which of an evaluation's batches 1..`count` are read again: the first, the last and AUDITED_AT_RANDOM of
    the others, drawn from the operating system's entropy (not from the seeded generators a model can see)."""
    middle = range(2, count)
    return {1, count} | set(random.SystemRandom().sample(middle, min(AUDITED_AT_RANDOM, len(middle))))


def check(spec: Any, reads: list[tuple[str, Any, torch.Tensor, torch.Tensor]], device: torch.device,
          weights: dict[str, torch.Tensor]) -> None:
    """MembenchError unless the run `spec`'s model, rebuilt in a new interpreter on `device` with `weights` (its
    state_dict before the evaluated writes) and the ENVIRONMENT from before any run, reads each kept state and
    queries (B, N, *S) of `reads` (name, state, queries, retrievals) into the retrievals the run scored (each
    read there, as here, from seed 0)."""
    from membench.datasets import data_dir

    with tempfile.TemporaryDirectory() as scratch:
        task_file, answer = Path(scratch) / "task.pt", Path(scratch) / "answer.pt"
        torch.save({"spec": dataclasses.asdict(spec), "weights": weights, "device": str(device),
                    "reads": [(portable(state, spec.model), queries) for _, state, queries, _ in reads]}, task_file)
        env = {**ENVIRONMENT, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]),
               "MEMBENCH_DATA": str(Path(data_dir()).resolve())}  # --data-dir set it in this process only
        try:
            child = subprocess.run([sys.executable, "-m", "membench.fresh_read", str(task_file), str(answer)],
                                   capture_output=True, text=True, env=env, cwd=os.getcwd(), timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MembenchError(f"model '{spec.model}' did not read its state within {CHILD_TIMEOUT_S} s in a fresh "
                                "process; its read must not wait on anything but the state") from None
        if child.returncode != 0 or not answer.exists():
            last = (child.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise MembenchError(f"model '{spec.model}' could not be rebuilt and read in a fresh process ({last}); "
                                "a model must be importable as module:Class (not defined in a script's __main__) "
                                "and build from its run (name, task, budget, options) alone")
        again = torch.load(answer, map_location="cpu", weights_only=True)
    for (name, _, _, retrievals), fresh in zip(reads, again, strict=True):
        if fresh.shape != retrievals.shape or not torch.allclose(fresh, retrievals.cpu(), rtol=TOLERANCE,
                                                                 atol=TOLERANCE, equal_nan=True):
            raise MembenchError(
                f"model '{spec.model}' retrieved differently in a fresh process from the same state, queries and "
                f"weights ({name}); read must depend only on those (a table kept in a module, keyed "
                "by the patterns or by a value of the state, an environment variable, or a buffer changed by the "
                "evaluated writes is not the state)")


@dataclasses.dataclass(frozen=True)
class _Instance:
    """A dataclass or named tuple of a state on its way to the child: its class by name and its items alone."""

    module: str
    qualname: str
    items: Any  # {field: value} of a dataclass, [value, ...] of a named tuple


def portable(state: Any, model_name: str) -> Any:
    """A sealed `state` (`budget.sealed`) as the child gets it: its dataclasses and named tuples as `_Instance`s,
    their classes named by module and qualname, so that no pickling hook of a class (`__reduce__`,
    `__getstate__`, a `copyreg` entry) carries anything beside the measured values; MembenchError for a class
    that its module and qualname do not name (made by a write, say), which the child could not rebuild."""
    named = isinstance(state, tuple) and hasattr(state, "_fields")
    if named or (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        cls = type(state)
        try:
            found = _named_class(cls.__module__, cls.__qualname__)
        except Exception:  # noqa: BLE001 (whatever importing or looking it up raises: not found)
            found = None
        if found is not cls:
            raise MembenchError(f"model '{model_name}': its memory state is a {cls.__qualname__}, which "
                                f"{cls.__module__}.{cls.__qualname__} does not name; a state's dataclasses and "
                                "named tuples must be classes defined at a module's top level")
        items = ([portable(item, model_name) for item in state] if named else
                 {f.name: portable(object.__getattribute__(state, f.name), model_name)
                  for f in dataclasses.fields(state)})
        return _Instance(cls.__module__, cls.__qualname__, items)
    if isinstance(state, (tuple, list)):
        return type(state)(portable(item, model_name) for item in state)
    if isinstance(state, dict):
        return {key: portable(item, model_name) for key, item in state.items()}
    return state


def _named_class(module: str, qualname: str) -> type:
    """The class `module`.`qualname` names (raises what importing or looking it up raises)."""
    return functools.reduce(getattr, qualname.split("."), importlib.import_module(module))


def _rebuilt(state: Any) -> Any:
    """`portable`'s inverse, in the child: each class imported by name, its instance made without its code."""
    if isinstance(state, _Instance):
        cls = _named_class(state.module, state.qualname)
        if isinstance(state.items, list):
            return tuple.__new__(cls, [_rebuilt(item) for item in state.items])
        instance = object.__new__(cls)
        for name, item in state.items.items():
            object.__setattr__(instance, name, _rebuilt(item))
        return instance
    if isinstance(state, (tuple, list)):
        return type(state)(_rebuilt(item) for item in state)
    if isinstance(state, dict):
        return {key: _rebuilt(item) for key, item in state.items()}
    return state


def unforeseen_check(spec: Any, model: AssociativeMemory, task: Any, device: torch.device, contract: Any,
                     errors: list[float]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """MembenchError unless `model` errs on test episodes drawn from the operating system's entropy (as many as
    were evaluated, from UNFORESEEN_EPISODES[0] to [1]) about as it erred on the run's evaluated episodes
    (`errors`: per query, N queries an episode); their state must meet the run's `contract` and their
    retrievals (read from seed 0) be finite, as any evaluated batch's. Returns the kept state, the queries and
    the retrievals, for the fresh-process read.

    An honest memory's per-episode mean errors on both come from one distribution; one that answers from
    foreseen episodes rather than from its state errs on the unforeseen ones as if it stored nothing. Refused
    when their mean exceeds the evaluated mean by more than UNFORESEEN_SIGMAS standard errors of the difference
    (the larger of the two samples' spreads) and by more than UNFORESEEN_SLACK of the unforeseen episodes'
    error with the queries returned unchanged."""
    from membench.integrity import write_and_read
    from membench.tasks import forked_generators, seed_all

    evaluated = torch.tensor(errors, dtype=torch.float64).reshape(-1, task.spec.num_patterns).mean(dim=1)
    count = min(max(len(evaluated), UNFORESEEN_EPISODES[0]), UNFORESEEN_EPISODES[1])
    generator = torch.Generator().manual_seed(random.SystemRandom().getrandbits(63))
    episodes = task.sample(count, generator, split="test").to(device)
    with torch.no_grad(), forked_generators(device):
        seed_all(spec.seed)
        state, retrievals = write_and_read(model, episodes.patterns, episodes.queries, contract, spec.model,
                                           "for episodes drawn unforeseeably", read_seed=0)
    unforeseen = task.errors(retrievals, episodes.patterns).mean(dim=1).double().cpu()
    spread = max((sample.std().item() for sample in (evaluated, unforeseen) if len(sample) > 1), default=0.0)
    allowed = max(UNFORESEEN_SIGMAS * spread * (1 / len(evaluated) + 1 / len(unforeseen)) ** 0.5,
                  UNFORESEEN_SLACK * task.errors(episodes.queries, episodes.patterns).mean().item())
    excess = unforeseen.mean().item() - evaluated.mean().item()
    if not excess <= allowed:  # (NaN too)
        raise MembenchError(
            f"model '{spec.model}' erred {unforeseen.mean().item():.3g} on {len(unforeseen)} episodes drawn "
            f"unforeseeably against {evaluated.mean().item():.3g} on the run's {len(evaluated)} evaluated ones, "
            f"more than chance allows ({allowed:.3g}); its retrievals must come from the state it wrote, not from "
            "foreseeing the seeded test episodes (e.g. from torch.initial_seed()), so no record was written")
    return state, episodes.queries, retrievals


def _child(task_file: str, answer: str) -> None:
    """Rebuild the run's model (its seed, then its weights), read each state, save the retrievals."""
    from membench.registry import make_task, resolve_model
    from membench.build import build_model, resolve_device
    from membench.tasks import seed_all
    from membench.run_spec import RunSpec

    saved = torch.load(task_file, weights_only=False)  # written by `check` in the parent, a moment ago
    spec = RunSpec(**saved["spec"])
    device = resolve_device(saved["device"].split(":")[0])
    task = make_task(spec.task)
    resolve_model(spec.model)  # imported before seeding, as in the parent (a module may draw at import)
    seed_all(spec.seed)  # as the runner built it
    model = build_model(spec, task).to(device)
    model.load_state_dict(saved["weights"], strict=False)  # a buffer a read registers lazily is not missing
    model.eval()
    answers = []
    with torch.no_grad():
        for state, queries in saved["reads"]:
            seed_all(0)
            answers.append(model.read(_rebuilt(state), queries.clone()).detach().cpu())
    torch.save(answers, answer)


if __name__ == "__main__":
    from membench.fresh_read import _child as child  # the module's own classes (`_Instance`), not __main__'s

    child(*sys.argv[1:3])
