"""A run's record: the fields every record holds, their checks, and the per-query errors packed for storage.

A record is one JSON file (`membench.store` writes and finds them): the run's identity (run id, suite, model,
task, budget, seed, queries, preset, options), what it measured (`errors`, one per query, and the memory's
float32 count) and where it ran (environment, command, wall time, training). `parse_record` refuses a file
that is not a complete record, naming what is wrong, so reports never read half a run.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from membench.errors import MembenchError
from membench.options import is_int

RECORD_KEYS = ("run_id", "suite", "model", "task", "budget", "seed", "queries", "preset", "options",
               "memory_floats", "errors", "environment", "command", "wall_time_s", "training")
PACK_ERRORS_OVER = 10_000  # a record with more per-query errors stores them packed (Figure 3: 64,000 a point)


def pack_errors(errors: list[float]) -> list[float] | dict[str, Any]:
    """Per-query errors as stored: the list itself, or, when longer than PACK_ERRORS_OVER and every value is
    a float32 number (as the tasks compute them), {"float32_zlib_base64": ..., "count": n}: the same
    values, little-endian float32, zlib-compressed, base64: lossless, and about 4 times smaller than the list
    for CIFAR's squared errors, far smaller for Omniglot's whole-pixel counts."""
    if len(errors) <= PACK_ERRORS_OVER:
        return errors
    values = np.asarray(errors, dtype="<f4")
    if not np.array_equal(values.astype(np.float64), np.asarray(errors, dtype=np.float64)):
        return errors
    return {"float32_zlib_base64": base64.b64encode(zlib.compress(values.tobytes(), 9)).decode(), "count": len(errors)}


def unpack_errors(stored: Any) -> Any:
    """The per-query errors of a stored record's `errors` field (see `pack_errors`); other values unchanged."""
    if not isinstance(stored, dict):
        return stored
    values = np.frombuffer(zlib.decompress(base64.b64decode(stored["float32_zlib_base64"], validate=True)), "<f4")
    if values.size != stored["count"]:
        raise ValueError(f"packed errors hold {values.size} values, the record says {stored['count']}")
    if not (np.isfinite(values) & (values >= 0)).all():
        raise ValueError("packed errors hold a value that is not a finite non-negative number")
    return values.astype(np.float64).tolist()


def read_record(path: Path) -> dict[str, Any]:
    """The record at `path`, its errors unpacked; MembenchError naming the file when it is not a complete record."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"record {path} is unreadable ({type(exc).__name__}: {exc})") from None
    return parse_record(text, f"record {path}")


def parse_record(text: str | bytes, name: str) -> dict[str, Any]:
    """A record from its JSON text, its errors unpacked; MembenchError starting with `name` when it is not a
    complete record."""
    try:
        record = json.loads(text)
        packed = isinstance(record, dict) and isinstance(record.get("errors"), dict)  # float32 by construction
        if packed:
            record["errors"] = unpack_errors(record["errors"])
    except (UnicodeDecodeError, json.JSONDecodeError, binascii.Error, zlib.error, KeyError, TypeError,
            ValueError, RecursionError) as exc:  # (RecursionError: JSON nested deeper than Python's stack)
        raise MembenchError(f"{name} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
        raise MembenchError(f"{name} is not a membench record (missing {', '.join(missing)})")
    if not isinstance(record["errors"], list) or not record["errors"]:
        raise MembenchError(f"{name} holds no per-query errors")
    problem = _field_problem(record, check_errors=not packed)
    if problem:
        raise MembenchError(f"{name} is not a membench record ({problem})")
    return record


def completeness(record: dict[str, Any]) -> tuple[bool, int, str]:
    """How complete a record is, to keep the better of two of one run or cell: whether its model's training
    was finished (not a paused checkpoint's, `--no-train`), then its queries, then its finish."""
    return ((record.get("training") or {}).get("finished") is not False, len(record["errors"]),
            record.get("finished_at", ""))


def better_because(kept: dict[str, Any], other: dict[str, Any]) -> str:
    """Why `completeness` ranks `kept` above `other`, in words ('it holds more queries', …)."""
    reasons = ("its model's training finished, the other's checkpoint was paused", "it holds more queries",
               "it finished later")
    return next(reason for reason, a, b in zip(reasons, completeness(kept), completeness(other)) if a != b)


def _field_problem(record: dict[str, Any], check_errors: bool = True) -> str | None:
    """What is wrong with the fields the reports group, sum and print, or None (`check_errors`: each error's
    type too, needless where they were unpacked from float32)."""
    task, environment = record["task"], record["environment"]
    if (not isinstance(task, dict) or not isinstance(task.get("kind"), str) or not is_int(task.get("num_patterns"))
            or task["num_patterns"] < 1):
        return "task needs a kind and a positive whole num_patterns"
    if not isinstance(environment, dict) or not isinstance(environment.get("device"), str):
        return "environment needs a device"
    for name in ("device_name", "torch", "membench", "git_commit"):
        if not isinstance(environment.get(name), (str, type(None))):
            return f"environment's {name} is not a string"
    sizes = {"binary": ("dim", "erased")}.get(task["kind"], ("image_size", "block"))
    if not all(is_int(task.get(name)) and task[name] >= 0 for name in sizes):
        return f"a {task['kind']} task needs whole numbers {' and '.join(sizes)}"
    rates = [name for name in ("flip", "mask") if name in task]  # optional corruptions: shares, a noise's sigma
    if not all(nonnegative_number(task[name]) and task[name] <= 1 for name in rates):
        return f"task's {' and '.join(rates)} must be shares in [0, 1]"
    if "noise" in task and not nonnegative_number(task["noise"]):
        return "task's noise is not a standard deviation"
    if "data" in task and not isinstance(task["data"], str):
        return "task's data is not a description of the data set"
    if len(record["errors"]) % task["num_patterns"]:
        return f"errors holds {len(record['errors'])} values, not whole episodes of {task['num_patterns']} queries"
    training = record.get("training")
    if not isinstance(training, (dict, type(None))):
        return "training is neither a mapping nor null"
    if training is not None and not (isinstance(training.get("checkpoint_key"), str)
                                     and isinstance(training.get("curve"), str)
                                     and isinstance(training.get("config"), dict)):
        return "training needs a checkpoint_key, a curve (strings) and a config (a mapping)"
    key = (training or {}).get("checkpoint_key", "")  # a model or preset name of a plugin may hold any character
    if training is not None and not (key and not key.startswith(".") and not set("/\\\0") & set(key)
                                     and training["curve"] == f"training/{key}.csv"):
        return "training's checkpoint_key is not a file name, or its curve not training/<checkpoint_key>.csv"
    if training is not None and not nonnegative_number(training.get("train_time_s")):
        return "training's train_time_s is not a number of seconds"
    if not isinstance((training or {}).get("finished", True), bool):
        return "training's finished is neither true nor false"
    now = (training or {}).get("trained_by_this_run", {"steps": 0, "train_time_s": 0})
    if not (isinstance(now, dict) and is_int(now.get("steps")) and now["steps"] >= 0
            and nonnegative_number(now.get("train_time_s"))):
        return "training's trained_by_this_run is not {steps, train_time_s}"
    history = (training or {}).get("history")
    if history is not None and not training_history(history):
        return "training's history is not a list of stretches (device, device_name, steps, train_time_s, commit)"
    preset_config = record.get("preset_config")
    if preset_config is not None and not (isinstance(preset_config, dict)
                                          and isinstance(preset_config.get("model"), dict)
                                          and isinstance(preset_config.get("train"), dict)):
        return "preset_config needs a model and a train mapping"
    split = record.get("train_split")
    if split is not None and not (isinstance(split, dict) and isinstance(split.get("batch_errors"), list)
                                  and all(nonnegative_number(e) for e in split["batch_errors"])):
        return "train_split needs batch_errors, a list of finite non-negative numbers"
    for name, low in (("budget", 0), ("seed", 0), ("queries", 1), ("memory_floats", 0)):  # budget 0: a reference line
        if not is_int(record[name]) or record[name] < low:
            return f"{name} is not a whole number of at least {low}"
    if record["memory_floats"] > record["budget"]:
        return f"memory_floats {record['memory_floats']} exceeds its budget {record['budget']}, which no run does"
    for name in ("run_id", "suite", "model", "preset", "command"):
        if not isinstance(record[name], str):
            return f"{name} is not a string"
    if not isinstance(record["wall_time_s"], (int, float)) or isinstance(record["wall_time_s"], bool):
        return "wall_time_s is not a number"
    if not isinstance(record.get("finished_at", ""), str):
        return "finished_at is not a string"
    if not isinstance(record["options"], dict):
        return "options is not a mapping"
    if check_errors and not all(nonnegative_number(e) for e in record["errors"]):
        return "errors holds a value that is not a finite non-negative number"
    return None


def list_of_mappings(value: Any) -> bool:
    """A list of dicts (a training curve's rows, a history's stretches)."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def training_history(value: Any) -> bool:
    """A training history (checkpoints', records'): a list of stretches, each with its device type, the device's
    name (None in one rebuilt from a record that lacked it), its [first, last] step, seconds and commit (or None),
    as reports and `membench checkpoints` read them."""
    def stretch(item: dict) -> bool:
        steps = item.get("steps")
        return (isinstance(item.get("device"), str) and isinstance(item.get("device_name"), (str, type(None)))
                and isinstance(steps, list) and len(steps) == 2 and all(is_int(s) and s >= 0 for s in steps)
                and nonnegative_number(item.get("train_time_s")) and isinstance(item.get("commit"), (str, type(None))))
    return list_of_mappings(value) and all(stretch(item) for item in value)


def nonnegative_number(value: Any) -> bool:
    """A finite non-negative int or float (not a bool): seconds, an error."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
