"""Named suites: each expands to a list of runs (model x number of patterns x seed)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from membench.budget import TABLE1_BUDGET, TABLE1_NUM_PATTERNS, hopfield_floats
from membench.errors import MembenchError, OverBudgetError
from membench.store import warn

CLASSICAL_MODELS = ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse", "raw_slots")
MODERN_MODELS = ("modern_hopfield", "dense_associative_memory", "universal_hopfield", "sparse_distributed_memory")
LEARNED_MODELS = ("ebmm", "memory_networks", "memory_networks_learned", "mann", "lstm", "differentiable_plasticity",
                  "kanerva_machine", "dnc")


DEFAULT_PRESET = "quick"
BUILTIN_PRESETS = ("quick", "gpu", "paper")  # the presets of every built-in learned model


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run's numbers (device aside)."""

    suite: str
    model: str                      # registry name or 'module:Class'
    task: dict[str, Any]            # task config, e.g. {"kind": "binary", "num_patterns": 16, ...}
    budget: int                     # float32 budget the model must fit
    seed: int
    queries: int                    # at least this many queries are evaluated
    preset: str = DEFAULT_PRESET    # training preset of learned models (others run under the default)
    options: dict[str, Any] = field(default_factory=dict)  # constructor options; a learned model's config, train.*

    @property
    def run_id(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        safe_model = self.model.replace(":", "-").replace(".", "-")
        return f"{self.suite}-{safe_model}-N{self.task['num_patterns']}-s{self.seed}-{digest}"


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


Points = tuple[tuple[dict[str, Any], int], ...]  # (constructor options, float32 budget) per point


@dataclass(frozen=True)
class Curve:
    """One curve of a rate sweep: a model and its memory-size points per preset.

    `points` holds the points of each preset ("quick", "gpu", "paper"); an untrained model
    has the same points under every preset (key "*").
    """

    model: str                       # registry name
    points: dict[str, Points]        # preset -> points

    def at(self, preset: str) -> Points:
        return self.points.get(preset, self.points.get("*", ()))

    def all_points(self) -> Points:
        return tuple(point for points in self.points.values() for point in points)


# Figure 3 curves per data set, keyed by the paper's curve label (paper_fig3.csv `model`).
# quick (CPU smoke test; see each model's IMAGE_PRESETS): 2 points per curve at narrower widths
#   EBMM_FC   257 * d (embedding 256): d = 16, 32 -> 4112, 8224 (paper points 4.11k, 8.23k)
#   EBMM_conv 578 * d (bottleneck 32; the paper's 64 gives 1154 * d): d = 6, 16 -> 3468, 9248
#   MemNet    64 slots x width w: w = 48, 128 -> 3072, 8192
#   MANN      64 slots x width w + controller (h, c) 2 x 32: w = 32, 64 -> 2112, 4160
# gpu (one GPU, the paper's architectures, App. B.2/B.3): 4 points per curve at the paper's own
# memory sizes, spanning its range; paper: all the paper's points (7 a curve; MANN's 9 on Omniglot, 6 on CIFAR)
#   EBMM_FC   257 * d:  d = 12, 20, 42, 64 (paper: 12, 16, 20, 32, 42, 54, 64) -> 3.08k ... 16.45k
#   EBMM_conv 1154 * d: d = 2, 4, 10, 14 (paper: 2, 3, 4, 8, 10, 12, 14) -> 2.31k ... 16.16k
#   MemNet    64 * w:   w = 48, 64, 160, 256 (paper: 48, 64, 128, 160, 192, 224, 256) -> 3.07k ... 16.38k
#   MANN      64 * w + 64 (the controller's h and c), w chosen so the memory is the paper's point's (its
#             accounting is not stated: its CIFAR points lie at 64 * w for w = 16 ... 192, its Omniglot points
#             at about 68 * w): Omniglot w = 17, 33, 67, 207 (paper: + 25, 26, 50, 135, 271) -> 1.15k ... 13.31k;
#             CIFAR w = 15, 31, 95, 191 (paper: + 23, 47) -> 1.02k ... 12.29k
# raw_slots (whole images, nearest neighbour on the known pixels) is the untrained reference;
# passthrough (the query returned unchanged, 0 floats) is the floor: what the corruption costs.
def _ebmm_points(energy: str, floats_per_unit: int, units: tuple[int, ...]) -> Points:
    return tuple(({"energy": energy, "memory_size": d}, floats_per_unit * d) for d in units)


def _per_preset(make, quick: tuple[int, ...], gpu: tuple[int, ...], paper: tuple[int, ...]) -> dict[str, Points]:
    return dict(zip(BUILTIN_PRESETS, (make(quick), make(gpu), make(paper))))


def _image_curves(pattern_floats: int, raw_counts: tuple[int, ...], mann_gpu: tuple[int, ...],
                  mann_paper: tuple[int, ...]) -> dict[str, Curve]:
    fc = _per_preset(lambda ds: _ebmm_points("resnet_fc", 257, ds), (16, 32), (12, 20, 42, 64),
                     (12, 16, 20, 32, 42, 54, 64))
    conv = {"quick": _ebmm_points("resnet_conv", 578, (6, 16)), "gpu": _ebmm_points("resnet_conv", 1154, (2, 4, 10, 14)),
            "paper": _ebmm_points("resnet_conv", 1154, (2, 3, 4, 8, 10, 12, 14))}
    memnet = _per_preset(lambda ws: tuple(({}, 64 * w) for w in ws), (48, 128), (48, 64, 160, 256),
                         (48, 64, 128, 160, 192, 224, 256))
    mann = _per_preset(lambda ws: tuple(({"memory_width": w}, 64 * w + 64) for w in ws), (32, 64), mann_gpu, mann_paper)
    return {
        "EBMM_FC": Curve("ebmm", fc),
        "EBMM_conv": Curve("ebmm", conv),
        "MemNet": Curve("memory_networks", memnet),
        "MANN": Curve("mann", mann),
        "raw_slots": Curve("raw_slots", {"*": tuple(({}, pattern_floats * count) for count in raw_counts)}),
        "passthrough": Curve("passthrough", {"*": (({}, 0),)}),
    }


FIG3_CURVES: dict[str, dict[str, Curve]] = {
    "omniglot": _image_curves(1 * 32 * 32, (1, 2, 4, 8, 16), (17, 33, 67, 207),
                              (17, 25, 26, 33, 50, 67, 135, 207, 271)),
    "cifar10": _image_curves(3 * 32 * 32, (1, 2, 3, 4, 5), (15, 31, 95, 191), (15, 23, 31, 47, 95, 191)),
}


OTHER_MODELS_CURVE = "MemNet"  # a model no curve names runs at this curve's memory sizes (its own budgets;
#   under a preset name of its own, the quick preset's)


@dataclass(frozen=True)
class SweepSuite:
    """A rate sweep on an image task (Figure 3): every curve's (options, budget) points; a model no curve
    names (yours, or another built-in memory) at the memory sizes of the OTHER_MODELS_CURVE curve, each
    point's budget given to the model to size itself (`from_spec`)."""

    description: str
    dataset: str                          # image task kind: "omniglot" or "cifar10"
    curves: dict[str, Curve]              # paper curve label -> curve
    num_patterns: tuple[int, ...] = (64,)  # images written per episode (paper: 64)
    image_size: int = 32
    block: int = 16
    queries: int = 64000                  # default --queries: 1000 batches of 64 (the paper's 1000 random batches)

    def expand(self, name: str, models: tuple[str, ...] | None, seeds: tuple[int, ...], queries: int,
               preset: str, num_patterns: tuple[int, ...] | None = None, budget: int | None = None) -> list[RunSpec]:
        """Runs for the curves whose label or model is in `models` (all by default), and for each other model
        in `models` a curve at the memory sizes of OTHER_MODELS_CURVE; with `budget`, only their points of
        that memory size (one point of a curve, e.g. for a short probe of a recipe)."""
        from membench.registry import make_task

        curves = [c for label, c in self.curves.items() if not models or label in models or c.model in models]
        missing = sorted({label for label, c in self.curves.items() if c in curves and not c.at(preset)})
        if missing:
            raise MembenchError(f"suite '{name}' has no points for preset '{preset}' (curves {', '.join(missing)}); "
                                f"give --preset one of {', '.join(BUILTIN_PRESETS)}")
        named = {label for label in self.curves} | {c.model for c in self.curves.values()}
        points = self.curves[OTHER_MODELS_CURVE].points  # a preset of a model's own: the quick preset's sizes
        others = [Curve(model, {"*": tuple(({}, b) for _, b in points.get(preset, points["quick"]))})
                  for model in models or () if model not in named]  # sized by the budget, as Memory Networks
        sizes = sorted({size for curve in [*curves, *others] for _, size in curve.at(preset)} - {0})  # 0: passthrough
        if budget is not None and budget not in sizes:  # (curves without that size are left out)
            raise MembenchError(f"suite '{name}' has no point of {budget} floats among these curves' (preset "
                                f"{preset}); give --budget one of {', '.join(map(str, sizes)) or '(none)'}, or drop it")
        specs = []
        for n in num_patterns or self.num_patterns:
            task = make_task({"kind": self.dataset, "num_patterns": n, "image_size": self.image_size,
                              "block": self.block}).config()  # names the data found; loads it
            specs += [RunSpec(suite=name, model=curve.model, task=task, budget=point_budget, seed=seed,
                              queries=queries, preset=preset, options=dict(options))
                      for curve in [*curves, *others] for options, point_budget in curve.at(preset)
                      if budget in (None, point_budget) for seed in seeds]
        return specs

    def curve_label(self, model: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The paper's curve label of a run (the model name if no curve lists it) and the run's options
        beyond those of its curve point (e.g. train.precision from `--option`): the run's variant."""
        best: tuple[int, str, dict[str, Any]] | None = None
        for label, curve in self.curves.items():
            for point, _ in curve.all_points() if curve.model == model else ():
                if all(key in options and options[key] == value for key, value in point.items()):
                    if best is None or len(point) > best[0]:
                        best = (len(point), label, point)
        if best is None:
            return model, dict(options)
        return best[1], {key: value for key, value in options.items() if key not in best[2]}


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


def declared_count(spec: RunSpec) -> int | None:
    """The float32 count `spec`'s model declares for its task, as the runner builds it; None when the
    model refuses to be built within the budget (OverBudgetError from its constructor)."""
    import torch

    from membench.budget import declared_floats
    from membench.registry import errors_of_user_model, make_task
    from membench.build import build_model

    task = make_task(spec.task)
    with torch.random.fork_rng(devices=[]), errors_of_user_model(spec.model, "no run was started"):
        try:  # building draws no numbers that a later run would see
            model = build_model(spec, task)
        except OverBudgetError:
            return None
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
# unchanged) runs beside the memories as the floor: what the corruption alone costs.
# - the 16x16 block of Figure 3 (256 of 1024 pixel positions);
# - a random half of the pixel positions masked: the fraction of UHN's half-image masking (Millidge et al. 2022),
#   scattered instead of contiguous, and twice the block's pixels, so it is a harder test and not a repeat of it;
# - Gaussian noise sigma 0.2 on every value, between UHN's example (0.1) and the default sigma of its capacity
#   code (0.5): on CIFAR-10 a query returned as is then costs about as much as under the mask (about 100 squared
#   error per image; the block about 46), but no entry may be trusted; on Omniglot about 6 of 1024 pixels cross 0.5
IMAGE_CAPACITY_MODELS = CAPACITY_MODELS + ("passthrough",)
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
