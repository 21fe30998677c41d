"""Named suites: each expands to a list of runs (model x number of patterns x seed)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from membench.budget import TABLE1_BUDGET, TABLE1_NUM_PATTERNS, hopfield_floats
from membench.errors import MembenchError, OverBudgetError
from membench.run_spec import RunSpec
from membench.store import warn
from membench.sweeps import FIG3_CURVES, SweepSuite

CLASSICAL_MODELS = ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse", "raw_slots")
MODERN_MODELS = ("modern_hopfield", "dense_associative_memory", "universal_hopfield", "sparse_distributed_memory")
LEARNED_MODELS = ("ebmm", "memory_networks", "memory_networks_learned", "mann", "lstm", "differentiable_plasticity",
                  "kanerva_machine", "dnc")


@dataclass(frozen=True)
class Suite:
    """A grid of runs on the binary task."""

    description: str
    models: tuple[str, ...]
    num_patterns: tuple[int, ...] = TABLE1_NUM_PATTERNS
    dim: int = 128
    erased: int = 64
    budget: int = TABLE1_BUDGET
    queries: int = 1000             # default --queries

    def expand(self, name: str, models: tuple[str, ...] | None, seeds: tuple[int, ...], queries: int,
               preset: str, num_patterns: tuple[int, ...] | None = None, budget: int | None = None) -> list[RunSpec]:
        return [
            RunSpec(suite=name, model=model, seed=seed, queries=queries, preset=preset,
                    budget=budget or self.budget,
                    task={"kind": "binary", "num_patterns": n, "dim": self.dim, "erased": self.erased})
            for model in (models or self.models)
            for n in (num_patterns or self.num_patterns)
            for seed in seeds
        ]


CAPACITY_MODELS = CLASSICAL_MODELS + MODERN_MODELS   # the non-learned memories
CAPACITY_NUM_PATTERNS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Hopfield on 64 units, twice that, Table 1's (Hopfield on 128 units), twice and four times Table 1's:
# 16, 32, 64, 129 and 258 whole 128-bit patterns
CAPACITY_BUDGETS = (hopfield_floats(64), 2 * hopfield_floats(64), TABLE1_BUDGET, 2 * TABLE1_BUDGET, 4 * TABLE1_BUDGET)
BUDGET_NUM_PATTERNS = 64                              # N of the budget sweep
FLIP_RATES = (0.1, 0.2, 0.3)
FLIP_NUM_PATTERNS = (16, 32, 64, 96)


@dataclass(frozen=True)
class CapacitySuite(Suite):
    """A `Suite` over budgets and flip rates as well: runs = model x budget x flip x N x seed.

    `flips` empty: the erasure task (`erased` bits). Otherwise each flip rate is its own task,
    {"erased": 0, "flip": rate}, and `erased` must be 0. Runs whose model's declared float32
    count exceeds the point's budget (or that cannot be built within it) are left out.
    """

    budgets: tuple[int, ...] = (TABLE1_BUDGET,)
    flips: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.flips and self.erased:
            raise MembenchError(f"a suite with flip rates {self.flips} corrupts by flips alone: set erased=0")
        if not self.budgets:
            raise MembenchError("a capacity suite needs at least one budget")

    def grid(self, name: str, models: tuple[str, ...] | None, seeds: tuple[int, ...], queries: int, preset: str,
             num_patterns: tuple[int, ...] | None = None, budget: int | None = None) -> list[RunSpec]:
        """Every run of the grid, before the budget check (`--budget` replaces the budget sweep)."""
        specs = []
        for point_budget in (budget,) if budget else self.budgets:
            base = Suite.expand(self, name, models, seeds, queries, preset, num_patterns, point_budget)
            for flip in self.flips or (0.0,):
                specs += [dataclasses.replace(s, task={**s.task, "erased": 0, "flip": flip}) if flip else s
                          for s in base]
        return specs

    def expand(self, name: str, models: tuple[str, ...] | None, seeds: tuple[int, ...], queries: int,
               preset: str, num_patterns: tuple[int, ...] | None = None, budget: int | None = None) -> list[RunSpec]:
        specs, refused = split_by_budget(self.grid(name, models, seeds, queries, preset, num_patterns, budget))
        if not specs:
            raise MembenchError(f"suite '{name}': every run is over its budget: "
                                + "; ".join(sorted({_refusal(s, c) for s, c in refused})))
        if models and refused:  # runs of models named on the command line: say which are left out, and why
            warn(f"suite '{name}' leaves out: " + "; ".join(sorted({_refusal(s, c) for s, c in refused})))
        return specs


def _refusal(spec: RunSpec, count: int | None) -> str:
    held = f"declares {count} float32 values" if count is not None else "cannot be built"
    return f"{spec.model} {held} at budget {spec.budget}"


def declared_count(spec: RunSpec, refuse: bool = False) -> int | None:
    """The float32 count `spec`'s model declares for its task, as the runner builds it; None when the
    model refuses to be built within the budget (OverBudgetError from its constructor). `refuse`: raise
    that OverBudgetError instead, and the run's own one when the count exceeds the budget (the check
    before any run starts)."""
    import torch

    from membench.budget import check_declared, declared_floats
    from membench.registry import errors_of_user_model, make_task
    from membench.build import build_model

    task = make_task(spec.task)
    with torch.random.fork_rng(devices=[]), errors_of_user_model(spec.model, "no run was started"):
        try:  # building draws no numbers that a later run would see
            model = build_model(spec, task)
        except OverBudgetError:
            if refuse:
                raise
            return None
        if refuse:
            return check_declared(model, task.spec, spec.budget, spec.model,
                                  swept=isinstance(SUITES.get(spec.suite), SweepSuite))
        return declared_floats(model, task.spec, spec.model)


def split_by_budget(specs: list[RunSpec]) -> tuple[list[RunSpec], list[tuple[RunSpec, int | None]]]:
    """(runs within their budget, [(run, declared count or None) over it]), order kept."""
    counts: dict[str, int | None] = {}
    fit, refused = [], []
    for spec in specs:
        key = json.dumps([spec.model, spec.options, spec.preset, spec.task, spec.budget], sort_keys=True)
        if key not in counts:
            counts[key] = declared_count(spec)
        count = counts[key]
        if count is not None and count <= spec.budget:
            fit.append(spec)
        else:
            refused.append((spec, count))
    return fit, refused


def task_refusal(spec: RunSpec) -> str | None:
    """Why `spec`'s model refuses its task (the MembenchError it raises when built, other than over budget),
    or None when it accepts the task."""
    try:
        declared_count(spec)
    except MembenchError as exc:
        return str(exc)
    return None


# Image capacity (capacity-omniglot, capacity-cifar): the budget holds IMAGE_CAPACITY_IMAGES whole images, N runs
# past it. Corruptions, one task each (ImageTask arguments); the 0-float passthrough (the query returned
# unchanged) runs beside the memories as the floor, what the corruption alone costs, and so does the 0-float
# mean_fill (erased pixels set to the query's known mean) where the erased pixels are known (not under noise).
# - the 16x16 block of Figure 3 (256 of 1024 pixel positions);
# - a random half of the pixel positions masked: the fraction of UHN's half-image masking (Millidge et al. 2022),
#   scattered instead of contiguous, and twice the block's pixels, so it is a harder test and not a repeat of it;
# - Gaussian noise sigma 0.2 on every value, between UHN's example (0.1) and the default sigma of its capacity
#   code (0.5): on CIFAR-10 a query returned as is then costs about as much as under the mask (about 100 squared
#   error per image; the block about 46), but no entry may be trusted; on Omniglot about 6 of 1024 pixels cross 0.5
IMAGE_CAPACITY_MODELS = CAPACITY_MODELS + ("passthrough", "mean_fill")
IMAGE_CAPACITY_NUM_PATTERNS = (16, 32, 64, 128, 256)
IMAGE_CAPACITY_IMAGES = 64
IMAGE_CORRUPTIONS: tuple[dict[str, Any], ...] = ({"block": 16}, {"block": 0, "mask": 0.5}, {"block": 0, "noise": 0.2})


@dataclass(frozen=True)
class ImageCapacitySuite:
    """Capacity on an image task: runs = model x corruption x N x seed at a budget of `images` whole images.

    A model that refuses the data set's task (MembenchError when built: the Hopfield rules take flat patterns,
    dense AM and SDM binary ones) is left out, and so is a run over its budget (`split_by_budget`).
    Expanding loads the data set (the task config names the data found).
    """

    description: str
    dataset: str                                   # image task kind: "omniglot" or "cifar10"
    models: tuple[str, ...] = IMAGE_CAPACITY_MODELS
    num_patterns: tuple[int, ...] = IMAGE_CAPACITY_NUM_PATTERNS
    corruptions: tuple[dict[str, Any], ...] = IMAGE_CORRUPTIONS
    images: int = IMAGE_CAPACITY_IMAGES            # budget in whole images
    queries: int = 1024                            # default --queries

    def expand(self, name: str, models: tuple[str, ...] | None, seeds: tuple[int, ...], queries: int,
               preset: str, num_patterns: tuple[int, ...] | None = None, budget: int | None = None) -> list[RunSpec]:
        """The grid's runs whose model accepts the task and fits the budget (`--budget` replaces `images`)."""
        from membench.registry import make_task, resolve_model

        tasks = [make_task({"kind": self.dataset, "num_patterns": n, **corruption}).config()
                 for corruption in self.corruptions for n in num_patterns or self.num_patterns]
        budget = budget or self.images * make_task(tasks[0]).spec.pattern_size
        grid = [RunSpec(suite=name, model=model, task=task, budget=budget, seed=seed, queries=queries, preset=preset)
                for model in models or self.models for task in tasks for seed in seeds]
        refusals: dict[tuple[str, str], str | None] = {}  # (model, task) -> why the model refuses it, or None
        accepted = []
        for spec in grid:
            key = (spec.model, json.dumps(spec.task, sort_keys=True))
            if key not in refusals:
                resolve_model(spec.model)  # an unknown name is an error, not a refusal
                refusals[key] = task_refusal(spec)
            if refusals[key] is None:
                accepted.append(spec)
        specs, over = split_by_budget(accepted)
        left_out = sorted({f"{model} refuses the task ({why})" for (model, _), why in refusals.items() if why}
                          | {_refusal(s, c) for s, c in over})
        if not specs:
            raise MembenchError(f"suite '{name}' runs nothing: " + "; ".join(left_out))
        if models and left_out:  # runs of models named on the command line: say which are left out, and why
            warn(f"suite '{name}' leaves out: " + "; ".join(left_out))
        return specs


CAPACITY_SUITES: dict[str, CapacitySuite | ImageCapacitySuite] = {
    "capacity-n": CapacitySuite(
        "Capacity, non-learned memories: error against N = 8...256 at Table 1's task (128 bits, 64 erased) "
        "and budget (8256)", models=CAPACITY_MODELS, num_patterns=CAPACITY_NUM_PATTERNS),
    "capacity-n-learned": CapacitySuite(
        "Capacity, meta-learned memories (quick preset, Table 1's checkpoints, trained on N = 16...96): error "
        "against N = 8...256 at Table 1's task and budget", models=LEARNED_MODELS, num_patterns=CAPACITY_NUM_PATTERNS),
    "capacity-budget": CapacitySuite(
        "Capacity, non-learned memories: error at N = 64 against budgets 2080...33024 float32 (Hopfield rules, "
        "8256 floats, are absent below 8256)", models=CAPACITY_MODELS, num_patterns=(BUDGET_NUM_PATTERNS,),
        budgets=CAPACITY_BUDGETS),
    "capacity-flip": CapacitySuite(
        "Capacity, non-learned memories: error against N = 16...96 with 10/20/30% of the bits flipped "
        "(none erased), budget 8256", models=CAPACITY_MODELS, num_patterns=FLIP_NUM_PATTERNS, erased=0,
        flips=FLIP_RATES),
    "capacity-omniglot": ImageCapacitySuite(
        "Capacity on Omniglot, non-learned memories: wrong pixels against N = 16...256 images written, budget 64 "
        "images (65536 floats), queries corrupted by the 16x16 block, a 50% pixel mask or noise sigma 0.2",
        dataset="omniglot"),
    "capacity-cifar": ImageCapacitySuite(
        "Capacity on CIFAR-10, non-learned memories: squared error against N = 16...256 images written, budget 64 "
        "images (196608 floats), queries corrupted by the 16x16 block, a 50% pixel mask or noise sigma 0.2",
        dataset="cifar10"),
}


SUITES: dict[str, Suite | SweepSuite | CapacitySuite | ImageCapacitySuite] = {
    "table1": Suite("Table 1, classical memories (no training): Hopfield rules and raw slots",
                    models=CLASSICAL_MODELS),
    "table1-modern": Suite("Table 1, associative memories the paper predates or only mentions (no training): modern "
                           "Hopfield, dense associative memory, universal Hopfield, sparse distributed memory",
                           models=MODERN_MODELS),
    "table1-learned": Suite("Table 1, meta-learned memories (trained with --preset, checkpoints cached)",
                            models=LEARNED_MODELS),
    "fig3-omniglot": SweepSuite("Figure 3, Omniglot: distortion (wrong pixels) against memory size, 64 images "
                                "written, 16x16 block corrupted", dataset="omniglot", curves=FIG3_CURVES["omniglot"]),
    "fig3-cifar": SweepSuite("Figure 3, CIFAR-10: distortion (squared error) against memory size, 64 images "
                             "written, 16x16 block corrupted", dataset="cifar10", curves=FIG3_CURVES["cifar10"]),
    **CAPACITY_SUITES,
}


def get_suite(name: str) -> Suite | SweepSuite | CapacitySuite | ImageCapacitySuite:
    if name not in SUITES:
        raise MembenchError(f"unknown suite '{name}'. Valid suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]
