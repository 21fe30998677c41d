"""Checks before any run starts: every spec's model, preset, options, task and budget, so that a command
with a bad one fails at once with one line (MembenchError) rather than after the runs before it.

`checked_specs` is what `membench run`, `membench throughput` and the session commands call first; the
runner (`membench.runner.execute`) checks each run again when it comes up (the measured state, not only the
declared count). `sized_or_optioned` explains a failure that the run's input caused (a built-in model's, or
any model's memory that could not be allocated).
"""
from __future__ import annotations

import dataclasses
import json
import traceback

from membench.errors import MembenchError, UnknownOption, out_of_memory
from membench.interface import resolve_options
from membench.options import check_constructor_options
from membench.registry import errors_of_user_model, is_builtin_model, make_task, resolve_model
from membench.run_spec import BUILTIN_PRESETS, DEFAULT_PRESET, RunSpec
from membench.suites import declared_count


def sized_or_optioned(spec: RunSpec, exc: Exception, where: traceback.FrameSummary,
                      outcome: str = "no record was written") -> MembenchError | None:
    """The one-line error (naming where it was raised) for a failure that the run's input can explain: memory
    it cannot allocate (sizes too large: any model's), or an error of a built-in model's run with options (a
    value out of the model's range); None for any other failure, which is membench's own and keeps its
    traceback."""
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}, at {where.filename}:{where.lineno}"
    if out_of_memory(exc):
        return MembenchError(f"model '{spec.model}' ran out of memory at N={spec.task['num_patterns']} with budget "
                             f"{spec.budget} and options {spec.options} ({message}); lower --num-patterns, --budget "
                             f"or the sizes the options give (a learned model's train.batch_size too); {outcome}")
    if spec.options and isinstance(exc, (ValueError, RuntimeError, AssertionError, OverflowError)):
        return MembenchError(f"model '{spec.model}' failed with options {spec.options} ({message}); where an "
                             f"option's value caused it, change it; {outcome}")
    return None


def checked_specs(specs: list[RunSpec]) -> list[RunSpec]:
    """`specs` after failing fast (MembenchError) on unknown models, tasks, presets and options, and on models
    over their budget (OverBudgetError), before any work; a model that is not trained gets DEFAULT_PRESET (one
    run id whatever built-in preset --preset names; a name no model of the run knows is refused) and none of the
    train.* options (those of meta-training: a suite's learned models take them, its others run as they are).
    Every model is built once per model, preset, options, task and budget, untrained (seconds for a command of
    large learned models, such as the gpu presets at every N), so an option it does not take is refused here too. An int given for a float option is made that float (one run, whichever
    was typed)."""
    checked, built = [], set()
    any_trained = any(resolve_model(spec.model).trainable for spec in specs)
    training_options = sorted({key for spec in specs for key in spec.options if key.startswith("train.")})
    if training_options and not any_trained:
        raise MembenchError(f"no model of this run is meta-learned, so --option {', '.join(training_options)} has "
                            "nothing to train; drop it")
    several = len({spec.model for spec in specs}) > 1
    for spec in specs:
        try:
            with errors_of_user_model(spec.model, "no run was started"):
                checked.append(_checked(spec, any_trained, built))
        except UnknownOption as exc:
            if not several:  # else perhaps an option another model of the run takes, not this one
                raise
            raise UnknownOption(f"{exc} (--option applies to every model of the run: name the ones it is for with "
                                "--model)") from None
        except MembenchError:
            raise
        except Exception as exc:  # noqa: BLE001 (a built-in model built with the run's sizes or options)
            if not is_builtin_model(resolve_model(spec.model)) and not out_of_memory(exc):
                raise  # membench's own failure (a user model's are errors_of_user_model's): its traceback
            explained = sized_or_optioned(spec, exc, traceback.extract_tb(exc.__traceback__)[-1], "no run was started")
            if explained is None:
                raise
            raise explained from None
    return checked


def _checked(spec: RunSpec, any_trained: bool, built: set) -> RunSpec:
    """One spec of `checked_specs` (`built`: the keys of the models it built already), refused when its model
    declares more float32 values than its budget, so a model over it at one N starts no run at any."""
    cls = resolve_model(spec.model)
    task = make_task(spec.task)
    if cls.trainable:
        spec = dataclasses.replace(spec, options=resolve_options(cls, task.spec, spec.preset, spec.options,
                                                                 spec.model)[1])
    else:
        if spec.preset not in BUILTIN_PRESETS and not any_trained:
            raise MembenchError(f"no model of this run has a preset '{spec.preset}'; give --preset one of "
                                f"{', '.join(BUILTIN_PRESETS)} (models that are not trained run under any)")
        options = {key: value for key, value in spec.options.items() if not key.startswith("train.")}
        spec = dataclasses.replace(spec, preset=DEFAULT_PRESET,
                                   options=check_constructor_options(cls, spec.model, options))
    key = (spec.model, spec.preset, json.dumps(spec.options, sort_keys=True), json.dumps(spec.task, sort_keys=True),
           spec.budget)
    if key not in built:
        declared_count(spec, refuse=True)
        built.add(key)
    return spec
