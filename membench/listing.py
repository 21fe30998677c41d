"""What `membench list` shows beyond the names: one suite's runs (`suite_table`) and one model's options
(`model_options`), as tables."""
from __future__ import annotations

import dataclasses
import inspect
import json

from tabulate import tabulate

from membench.budget import TABLE1_BUDGET
from membench.cli_common import suite_runs
from membench.interface import AssociativeMemory
from membench.preflight import checked_specs
from membench.registry import make_task
from membench.report import PAPER_TASK
from membench.sweeps import SweepSuite


def suite_table(suite: str, preset: str) -> str:
    """The runs of a suite under `preset` for seed 0, as `membench run --suite` expands them: one row each."""
    chosen, specs = suite_runs(suite, (), None, (0,), None, preset, None, {})
    specs = checked_specs(specs)  # as `run` checks them (an unknown preset refused; untrained models: quick)
    rows = []
    for spec in specs:
        task = {k: v for k, v in spec.task.items() if k not in ("kind", "num_patterns", "data")}
        curve = chosen.curve_label(spec.model, spec.options)[0] if isinstance(chosen, SweepSuite) else ""
        rows.append([spec.model, curve, spec.preset, spec.task["kind"], spec.task["num_patterns"], spec.budget,
                     " ".join(f"{k}={v}" for k, v in task.items()),
                     " ".join(f"{k}={v}" for k, v in spec.options.items())])
    headers = ["model", "curve", "preset", "task", "N", "budget (float32)", "task settings", "options"]
    if not any(row[1] for row in rows):
        headers, rows = headers[:1] + headers[2:], [row[:1] + row[2:] for row in rows]
    data = sorted({spec.task["data"] for spec in specs if "data" in spec.task})
    queries = specs[0].queries if specs else 0
    return (f"{suite}: {chosen.description}\n{len(specs)} run(s) a seed under preset {preset}, {queries} "
            f"queries each by default" + (f"; data: {', '.join(data)}" if data else "") + "\n\n"
            + tabulate(rows, headers=headers, tablefmt="github"))


def model_options(label: str, cls: type) -> str:
    """The `--option`s of a model as a table: per preset on Table 1's task for a learned model (config fields,
    then train.FIELD), its constructor's defaults for an untrained one."""

    def shown(value) -> str:  # as --option takes it: JSON, a string bare
        return value if isinstance(value, str) else json.dumps(value, default=str)

    if not cls.trainable:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        sized = getattr(cls.from_spec, "__func__", None) is not AssociativeMemory.from_spec.__func__  # sets them
        required = "(none: from_spec sets it)" if sized else "(none: required, give --option NAME=VALUE)"
        rows = [[p.name, required if p.default is inspect.Parameter.empty else shown(p.default)]
                for p in parameters if p.name != "spec" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not rows:
            return f"{label}: untrained; it takes no options"
        headers = ["option", "default"]
        sized = _sized_at_table1(cls)
        if sized is not None:  # from_spec overridden: what it sets from Table 1's budget wins over the default
            headers.append(f"from_spec at Table 1's {TABLE1_BUDGET} floats")
            rows = [[*row, sized.get(row[0], "")] for row in rows]
        return (f"{label}: untrained; its options (--option KEY=VALUE) and their defaults:\n"
                + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    presets = cls.presets(make_task({**PAPER_TASK, "num_patterns": 64}).spec, {})
    rows = []
    for part, prefix in (("model", ""), ("train", "train.")):
        for field in dataclasses.fields(getattr(next(iter(presets.values())), part)):
            rows.append([prefix + field.name, *(shown(getattr(getattr(p, part), field.name, ""))
                                                for p in presets.values())])
    return (f"{label}: learned; its options (--option KEY=VALUE) per preset on Table 1's task (image suites may "
            f"use other presets):\n" + tabulate(rows, headers=["option", *presets], tablefmt="github",
                                                 disable_numparse=True))


def _sized_at_table1(cls: type) -> dict[str, str] | None:
    """The option values an untrained model's own `from_spec` sets at Table 1's task (N = 64) and budget, as
    `--option` takes them (from its config(), else its attributes); None when it keeps the base class's
    from_spec (its defaults are what runs) or cannot be built for Table 1's task (raises anything)."""
    if getattr(cls.from_spec, "__func__", None) is AssociativeMemory.from_spec.__func__:
        return None
    try:
        model = cls.from_spec(make_task({**PAPER_TASK, "num_patterns": 64}).spec, TABLE1_BUDGET)
        config = model.config()
    except Exception:  # noqa: BLE001 (e.g. a model of images only, whatever it raises: the column is left out)
        return None
    values = {**{name: getattr(model, name) for name in vars(model) if not name.startswith("_")}, **config}
    return {name: value if isinstance(value, str) else json.dumps(value) for name, value in values.items()
            if isinstance(value, (bool, int, float, str, list, tuple))}
