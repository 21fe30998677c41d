"""Meta-training throughput: episodes per second of the real update (`membench throughput`).

Times `Stepper.step` (forward, second-order backward, clipping, AdamW; a CUDA graph replay
with --cuda-graph; the compiled meta-loss where the preset or --compile says so) on the
Table 1 task at each N given, or at each point of a Figure 3 rate sweep (on its images), after warm-up
updates (compiling happens there), on pre-sampled batches (sampling is left out: on CUDA,
training draws the next batch on a worker thread while an update runs, `episode_stream.EpisodeStream`;
on a CPU it adds its own time, e.g. a few ms to the quick preset's update; so is a model's
`after_update`, e.g. EBMM's `centre_tracking` pass of the encoder). CUDA timings synchronise before and after each
timed round. With several rounds the rows are
timed in turn, round after round, and each row keeps its median round: a machine whose
speed drifts slows every row alike. A reference commit adds a row timed by that commit's
own EBMM benchmark (`REFERENCE_BENCH`, the quick preset's update at 16 episodes, N = 64)
in a temporary git worktree, in the same rounds, so a speed-up is measured in one run: every row
timed beside it names that commit (`reference`) and its time in that run (`reference_ms`), and the
speed-up is reference_ms / ms_per_step.
Rows are merged into a CSV keyed by device name, suite, model, preset, options, budget, batch size, N,
graph and compile modes, precision and commit, so a rerun replaces its own rows and keeps the others.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from membench.budget import TABLE1_BUDGET
from membench.errors import MembenchError
from membench.interface import PRECISIONS
from membench.registry import make_task, resolve_model
from membench.provenance import device_name, git_state
from membench.build import build_model
from membench.preflight import checked_specs
from membench.stepper import Stepper
from membench.store import read_table, write_text_atomic
from membench.run_spec import RunSpec
from membench.suites import SUITES, get_suite
from membench.sweeps import SweepSuite

COLUMNS = ["device", "device_name", "suite", "model", "preset", "options", "budget", "batch_size", "num_patterns",
           "episodes_per_s", "ms_per_step", "commit", "cuda_graph", "compiled", "precision", "steps", "rounds",
           "threads", "torch", "measured_at", "reference", "reference_ms", "dirty", "warmup", "seed", "wall_time_s",
           "python", "numpy", "command"]
KEY = ["device_name", "suite", "model", "preset", "options", "budget", "batch_size", "num_patterns", "cuda_graph",
       "compiled", "precision", "commit", "threads", "torch"]  # a row replaces only a measurement of all these
NUMBERS = ["budget", "batch_size", "num_patterns", "episodes_per_s", "ms_per_step"]  # numeric where given
REFERENCE_BENCH = "tests/benchmarks/test_bench_ebmm.py::test_meta_training_step"  # EBMM quick, 16 episodes, N = 64
REFERENCE_BATCH = 16  # episodes an update of that benchmark and of the rows it is set beside (matches_reference)
SEED = 0  # the model's initial weights and the timed batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def options_label(options: dict[str, Any]) -> str:
    """The `options` column: the preset's overrides as `key=value` joined by spaces, sorted (empty: none)."""
    return " ".join(f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in sorted(options.items()))


def _row(device: torch.device, spec: RunSpec, batch_size: int, seconds: list[float], commit: str, cuda_graph: bool,
         compiled: bool, precision: str, steps: int, warmup: int | str, dirty: bool | None) -> dict[str, Any]:
    """A CSV row from the per-round seconds per update (the median round counts), with how it was made: the
    commit (and `dirty`: changes not committed; "unknown" where not known), warm-up updates, the batches' seed,
    the timed seconds, the versions and the command."""
    median = statistics.median(seconds)
    return {"device": device.type, "device_name": device_name(device), "suite": spec.suite, "model": spec.model,
            "preset": spec.preset, "options": options_label(spec.options), "budget": spec.budget,
            "batch_size": batch_size, "num_patterns": spec.task["num_patterns"],
            "episodes_per_s": round(batch_size / median, 1), "ms_per_step": round(1000 * median, 2),
            "commit": commit, "cuda_graph": cuda_graph, "compiled": compiled, "precision": precision, "steps": steps,
            "rounds": len(seconds), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dirty": "unknown" if dirty is None else dirty, "warmup": warmup, "seed": SEED,
            "wall_time_s": round(sum(seconds) * steps, 3), "python": platform.python_version(),
            "numpy": np.__version__, "command": shlex.join(["membench", *sys.argv[1:]])}


def run_specs(suite: str, models: Sequence[str], num_patterns: Sequence[int], preset: str,
              options: dict[str, Any] | None = None) -> list[RunSpec]:
    """What to time: for `table1`, each model on the Table 1 task at each N; for a rate sweep (fig3-omniglot,
    fig3-cifar), each point of the models' curves (its options: energy, memory_size, ...). `options` then
    change the preset as `membench run --option` does (e.g. hidden=256, grad_norm_term=false). MembenchError,
    before anything is timed, for a model that is not meta-trained or an unknown model, preset or option."""
    if suite == "table1":
        specs = []
        for n in num_patterns:
            task = make_task({"kind": "binary", "num_patterns": n, "dim": 128, "erased": 64}).config()
            specs += [RunSpec(suite, model, task, TABLE1_BUDGET, 0, n, preset) for model in models]
    else:
        chosen = get_suite(suite)
        if not isinstance(chosen, SweepSuite):
            sweeps = ", ".join(name for name, known in SUITES.items() if isinstance(known, SweepSuite))
            raise MembenchError(f"throughput times table1 or a rate sweep ({sweeps}), not '{suite}'")
        specs = chosen.expand(suite, tuple(models), (0,), 1, preset, tuple(num_patterns))
    specs = [dataclasses.replace(spec, options={**spec.options, **(options or {})}) for spec in specs]
    untrained = sorted({spec.model for spec in specs if not resolve_model(spec.model).trainable})
    if untrained:
        raise MembenchError(f"model(s) {', '.join(untrained)} not meta-trained; throughput measures meta-training "
                            "updates: give learned models (`membench list`)")
    return checked_specs(specs)  # every model, preset and option checked before any row is timed


def prepare(spec: RunSpec, device: torch.device, batch_size: int | None = None, steps: int = 20, warmup: int = 3,
            cuda_graph: bool = False, compile: bool | None = None, precision: str | None = None
            ) -> tuple[Callable[[], float], Callable[[list[float]], dict[str, Any]]]:
    """Build and warm up the row of one run (`run_specs`): returns `time_round()` (seconds per update, mean of
    `steps` updates) and `row(seconds)`. Batch size, compiling and arithmetic (`TrainConfig.precision`) as the
    preset says unless given."""
    task = make_task(spec.task)
    torch.manual_seed(SEED)
    built = build_model(spec, task).to(device)
    train = built.preset.train
    config = dataclasses.replace(train, cuda_graph=cuda_graph, batch_size=batch_size or train.batch_size,
                                 compile=train.compile if compile is None else compile,
                                 precision=precision or train.precision)
    stepper = Stepper(built, config, device)
    generator = torch.Generator().manual_seed(SEED)
    batches = [task.sample(config.batch_size, generator, split="train").to(device) for _ in range(4)]
    built.train()
    warmup = max(warmup, 1 if config.compile or config.cuda_graph else 0)  # compiling, capture untimed
    for index in range(warmup):
        stepper.step(batches[index % 4].patterns, batches[index % 4].queries)

    def time_round() -> float:
        _synchronize(device)
        started = time.perf_counter()
        for index in range(steps):
            out = stepper.step(batches[index % 4].patterns, batches[index % 4].queries)
        _synchronize(device)
        if not bool(out.finite):
            raise MembenchError(f"model '{spec.model}' ({spec.preset}) produced a non-finite loss while being timed")
        return (time.perf_counter() - started) / steps

    commit, dirty = git_state()
    label = (commit or "unknown")[:10] + ("-dirty" if dirty else "")
    return time_round, lambda seconds: _row(device, spec, config.batch_size, seconds, label, stepper.graphs_on,
                                            stepper.compiled, config.precision, steps, warmup, dirty)


def resolve_commit(name: str) -> str | None:
    """The full hash of the commit `name` (a hash, a prefix of one, HEAD, a branch) names in the repository this
    package runs from; None where it names none."""
    if name.startswith("-"):  # an option to git, not a name
        return None
    root = Path(__file__).resolve().parent.parent
    found = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                           capture_output=True, text=True)
    return (found.stdout.strip() or None) if found.returncode == 0 else None


@contextlib.contextmanager
def reference_tree(commit: str) -> Iterator[Path]:
    """A temporary detached git worktree of `commit` of the repository this package runs from."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="membench-reference-") as scratch:
        tree = Path(scratch) / "tree"
        made = subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-f", str(tree), commit],
                              capture_output=True, text=True)
        if made.returncode:
            reason = (made.stderr.strip().splitlines() or ["git failed"])[-1]
            raise MembenchError(f"cannot check out reference commit '{commit}' ({reason}); give a commit of this "
                                f"repository's history")
        try:
            check_reference_batch(tree, commit)
            yield tree
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)


def check_reference_batch(tree: Path, commit: str) -> None:
    """MembenchError unless the tree's `REFERENCE_BENCH` times REFERENCE_BATCH episodes an update, the batch of
    its row and of the rows it is set beside (the benchmark's `build` took 8 by default at some commits)."""
    probe = ("import inspect; from tests.benchmarks.test_bench_ebmm import build; "
             "print(inspect.signature(build).parameters['batch'].default)")
    ran = subprocess.run([sys.executable, "-c", probe], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    found = (ran.stdout.strip().splitlines() or [""])[-1] if ran.returncode == 0 else ""
    if found != str(REFERENCE_BATCH):
        times = f"times {found} episodes an update" if found else "has no build(batch=...) to tell its batch by"
        raise MembenchError(f"the reference benchmark at {commit[:10]} {times}, not the {REFERENCE_BATCH} episodes "
                            f"of the rows it is compared with; give a commit whose tests/benchmarks/test_bench_ebmm.py "
                            f"builds {REFERENCE_BATCH} (028ec1c, the issue's, does)")


def time_reference(tree: Path) -> float:
    """Seconds per update by the tree's own `REFERENCE_BENCH` (pytest-benchmark, the median of its rounds)."""
    with tempfile.TemporaryDirectory(prefix="membench-bench-") as scratch:
        report = Path(scratch) / "bench.json"
        ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", REFERENCE_BENCH,
                              "--benchmark-only", f"--benchmark-json={report}"], cwd=tree, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(tree)})
        if ran.returncode or not report.exists():
            tail = (ran.stdout.strip().splitlines() or ["no output"])[-1]
            raise MembenchError(f"the reference benchmark {REFERENCE_BENCH} failed in {tree} ({tail})")
        return json.loads(report.read_text())["benchmarks"][0]["stats"]["median"]


def measure(requests: list[dict[str, Any]], rounds: int = 1, reference: str | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Rows for `requests` (keyword arguments of `prepare`), timed in turn for `rounds` rounds, plus a row for
    the `reference` commit's benchmark on the CPU (EBMM quick, 16 episodes, N = 64) when given. With one round
    each row is built, timed, handed to `on_row` (e.g. merged into the table, so a command interrupted or
    failing later keeps it) and freed (its model, batches and CUDA graphs) before the next is built, so rows
    too large to be held together (Figure 3's points on one GPU) can be timed in one command."""
    rows, reference_seconds = [], []
    commit = resolve_commit(reference) if reference else None  # the full hash it names, once
    if reference and commit is None:
        raise MembenchError(f"cannot check out reference commit '{reference}' (not a commit here); give a commit of "
                            "this repository's history")
    if commit and commit[:10] == (git_state()[0] or "")[:10]:  # its row would take the key of a row timed here
        raise MembenchError(f"--reference {reference} is the commit being timed, whose rows its row would replace "
                            "in the table; give an earlier commit (uncommitted changes: commit them first)")
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(reference_tree(commit)) if commit else None
        if rounds == 1:
            for request in requests:
                time_round, row = prepare(**request)
                rows.append(row([time_round()]))
                if on_row is not None:
                    on_row(rows[-1])
                del time_round, row  # this row's model and graphs go before the next row's are built
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            if tree is not None:
                reference_seconds.append(time_reference(tree))
        else:
            prepared = [prepare(**request) for request in requests]
            seconds = [[] for _ in prepared]
            for _ in range(rounds):
                for (time_round, _), times in zip(prepared, seconds):
                    times.append(time_round())
                if tree is not None:
                    reference_seconds.append(time_reference(tree))
            rows = [row(times) for (_, row), times in zip(prepared, seconds)]
    if commit:
        spec = run_specs("table1", ["ebmm"], [64], "quick")[0]
        commit = commit[:10]
        rows.append({**_row(torch.device("cpu"), spec, REFERENCE_BATCH, reference_seconds, commit, False, False,
                            "float32", steps=1, warmup=0, dirty=False),  # pytest-benchmark's rounds of an update each, no
                     "wall_time_s": float("nan")})          # warm-up; their seconds in all are not kept
        for row in filter(matches_reference, rows[:-1]):  # a speed-up only where the same update was timed
            row.update(reference=commit, reference_ms=rows[-1]["ms_per_step"])
    return rows


def check_precisions(precisions: Sequence[str], device_type: str, cuda_graph: bool = False) -> None:
    """MembenchError for a precision or CUDA graphs the device cannot time (tf32 and graphs are CUDA's), before
    any row is built."""
    if "tf32" in precisions and device_type != "cuda":
        raise MembenchError(f"--precision tf32 is CUDA's (TF32 tensor cores); on {device_type} time float32 or bf16")
    if cuda_graph and device_type != "cuda":
        raise MembenchError(f"--cuda-graph is CUDA's (updates replayed from CUDA graphs); on {device_type} drop it")


def matches_reference(row: dict[str, Any]) -> bool:
    """Whether a row times the reference's update: the EBMM quick preset on the Table 1 task at N = 64, 16
    episodes an update, on a CPU (its options and precision may differ: an equal-work comparison)."""
    return (row["device"], row["suite"], row["model"], row["preset"], row["batch_size"], row["num_patterns"]) == (
        "cpu", "table1", "ebmm", "quick", REFERENCE_BATCH, 64)


# what rows from before each column meant
LATE_COLUMNS = {"compiled": False, "rounds": 1, "precision": "float32", "options": "", "suite": "table1",
                "budget": TABLE1_BUDGET, "reference": "", "reference_ms": float("nan"), "dirty": "not recorded",
                "warmup": "not recorded", "seed": "not recorded", "wall_time_s": float("nan"), "python": "not recorded",
                "numpy": "not recorded", "command": "not recorded"}


TOGETHER = ["dirty", "warmup", "seed", "wall_time_s", "python", "numpy", "command"]  # added at once: all or none


def _with_late_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every column of COLUMNS, the late ones filled where missing as the rows before them meant."""
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = LATE_COLUMNS.get(column)
        elif column in LATE_COLUMNS:
            frame[column] = frame[column].fillna(LATE_COLUMNS[column])
    return frame


def existing_table(path: Path) -> pd.DataFrame | None:
    """The throughput CSV at `path` (None when absent), in this membench's columns; MembenchError when it is
    not such a CSV."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):  # (written whole: a
        raise MembenchError(f"{path} is not a complete throughput CSV (its last line is cut short); move it "
                            "aside and rerun")                                               # last line ends in one)
    old = read_table(path, "a throughput CSV", ("device", "model", "episodes_per_s"), "move it aside and rerun",
                     dtype={"commit": str, "options": str, "suite": str, "reference": str, "dirty": str,
                            "warmup": str, "seed": str, "python": str, "numpy": str, "command": str})
    together = [column for column in TOGETHER if column in old]  # given (not absent, nor "not recorded")
    given = pd.DataFrame({c: old[c].notna() & (old[c].astype(str) != str(LATE_COLUMNS[c])) for c in together})
    cut = given.any(axis=1) & ~given.all(axis=1) if together else pd.Series(False, index=old.index)  # some: cut short
    old = _with_late_columns(old)[COLUMNS]
    required = [column for column in COLUMNS if column not in LATE_COLUMNS]  # in every row since the first
    gaps = old[required].isna()
    for column in together:
        gaps[column] = cut & (old[column] == LATE_COLUMNS[column])
    gaps["precision"] = ~old["precision"].isin(PRECISIONS)  # (a row cut short ends in a piece of one)
    for column in NUMBERS:  # text where a number belongs would also keep merge from matching the row's key
        text = old[column].notna() & pd.to_numeric(old[column], errors="coerce").isna()
        gaps[column] = gaps[column] | text if column in gaps else text
    if gaps.any(axis=None):
        row = int(gaps.any(axis=1).idxmax())
        missing = ", ".join(c for c in gaps.columns if gaps.at[row, c])
        raise MembenchError(f"{path} is not a complete throughput CSV (line {row + 2} has no valid {missing}); "
                            "move it aside and rerun")
    return old


def rows_since(path: Path, since: float) -> bytes | None:
    """The CSV of the rows of the throughput table at `path` measured at or after `since` (seconds since the
    epoch; rows keep whole seconds), None when there are none: what a session carries home, so that rows deleted
    here since its checkout left are not merged back by `membench unpack`."""
    table = existing_table(path)
    if table is None:
        return None
    measured = pd.to_datetime(table["measured_at"], utc=True, errors="coerce")
    new = table[measured >= pd.Timestamp(int(since), unit="s", tz="UTC")]
    return new.to_csv(index=False).encode() if len(new) else None


def merge(path: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Add `rows` to the CSV at `path` (a row with the same key replaces the old one); return the table."""
    path = Path(path)
    frame = _with_late_columns(pd.DataFrame(rows))[COLUMNS]  # rows from an older membench (an unpacked archive)
    old = existing_table(path)
    if old is not None:  # the latest row of a key; a commit named by a prefix of its hash (an older --reference
        frame = pd.concat([old, frame], ignore_index=True).sort_values("measured_at", kind="stable")  # label) is
        same = frame.assign(commit=frame["commit"].str.replace(r"^([0-9a-f]{7})[0-9a-f]*", r"\1", regex=True))
        frame = frame[~same.duplicated(KEY, keep="last")]                                        # that commit
    frame = frame.sort_values(["device", "suite", "model", "preset", "options", "budget", "num_patterns", "batch_size",
                               "cuda_graph", "compiled", "precision"], kind="stable")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_text_atomic(path, buffer.getvalue())
    return frame
