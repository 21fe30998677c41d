"""Figure 3's rate sweeps: each curve's memory-size points per preset, and the `SweepSuite` that expands them to
runs (model x point x seed) on an image task. The suites themselves are named in `membench.suites`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from membench.errors import MembenchError
from membench.run_spec import BUILTIN_PRESETS, RunSpec


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
# passthrough (the query returned unchanged, 0 floats) is the floor: what the corruption costs; mean_fill (the
# block filled with the query's known mean, 0 floats) what a read gets from the query alone.
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
        "mean_fill": Curve("mean_fill", {"*": (({}, 0),)}),
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
        that memory size (one point of a curve, e.g. for a short probe of a recipe), or, when `models` are
        all other models, a point of theirs at that size whatever it is."""
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
            if others and not curves:  # models of yours only: a point at any memory size
                others = [Curve(curve.model, {"*": (({}, budget),)}) for curve in others]
            else:
                raise MembenchError(f"suite '{name}' has no point of {budget} floats among these curves' (preset "
                                    f"{preset}); give --budget one of {', '.join(map(str, sizes)) or '(none)'}, or "
                                    "drop it (a model of yours alone takes any --budget)")
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


def record_curve(record: dict[str, Any]) -> tuple[str, str]:
    """(the paper's curve label of a record, its variant: the options beyond its curve point's, '' if none); a
    record of another suite: (its model, its options)."""
    from membench.report import options_text
    from membench.suites import SUITES

    suite = SUITES.get(record["suite"])
    if not isinstance(suite, SweepSuite):
        return record["model"], options_text(record["options"])
    label, extra = suite.curve_label(record["model"], record["options"])
    return label, options_text(extra)


def line_label(curve: str, variant: str) -> str:
    """A line of Figure 3: its curve, with its variant in brackets where it has one."""
    return f"{curve} [{variant}]" if variant else curve


TASK_TAGS = {"data": "data {}", "image_size": "{} px", "block": "block {}"}  # shown where a data set's runs vary
