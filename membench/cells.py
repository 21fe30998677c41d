"""Which stored records make a cell, and which of them count.

A cell is a task (everything but N) and budget, a model, its options, its preset and N (`cell_key`); the
seeds of a cell pool in it. `distinct` keeps one record per cell and seed, and only those made by a
model's latest source files and its cell's latest preset: what every table, curve and figure is built from.
"""
from __future__ import annotations

import json
from typing import Any

from membench.records import completeness


def task_key(record: dict[str, Any]) -> str:
    """What defines a table: the task (everything but N) and the budget."""
    task = {k: v for k, v in record["task"].items() if k != "num_patterns"}
    return json.dumps({"task": task, "budget": record["budget"]}, sort_keys=True)


def cell_key(record: dict[str, Any]) -> tuple[str, str, str, str, int]:
    """What defines a cell: task and budget, model, options, preset and N. Seeds pool inside it."""
    return (task_key(record), record["model"], json.dumps(record["options"], sort_keys=True), record["preset"],
            record["task"]["num_patterns"])


def latest_versions(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, stale): the records of each model made by the source files of its latest record among
    `records` (`model_source`; None for built-in models) and, in each cell, with the preset's fields of the
    cell's latest record (`preset_config`, late fields at their defaults aside: a preset changed between
    two seeds' runs), and the others."""
    from membench.run_identity import comparable_preset

    def preset(record: dict[str, Any]) -> str:
        fields = record.get("preset_config")
        return json.dumps(fields and comparable_preset(fields), sort_keys=True, default=str)

    latest: dict[Any, tuple[str, str | None]] = {}  # model, or cell -> (finished_at, its source or preset)
    for record in records:
        for key, value in ((record["model"], record.get("model_source")), (cell_key(record), preset(record))):
            if record.get("finished_at", "") >= latest.get(key, ("", None))[0]:
                latest[key] = (record.get("finished_at", ""), value)
    current = [r.get("model_source") == latest[r["model"]][1] and preset(r) == latest[cell_key(r)][1]
               for r in records]
    return ([r for r, keep in zip(records, current) if keep], [r for r, keep in zip(records, current) if not keep])


def distinct(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One record per (cell, seed), and how many were dropped.

    Records of one cell and seed draw their episodes from one stream (it depends on the seed alone):
    the same patterns in the same order, and with equal --queries the very same queries (with other
    --queries the batches differ, and so do the queries' corruptions, drawn after a batch's patterns).
    Pooling them would count patterns twice: a copied record file, the same run from two suites, or
    a rerun with more --queries. The most complete is kept (`records.completeness`: finished training before a
    paused checkpoint's, then the most queries, then the latest).

    Records of a model from outside membench made by another version of its source files than the model's
    latest record among `records` (`model_source`), and records made with other preset fields than their
    cell's latest record, are left out, with a warning: no cell, row or curve mixes two versions of a model.
    """
    records, stale = latest_versions(records)
    if stale:
        from membench.store import warn

        commands = sorted({r.get("command") or "" for r in stale} - {""})
        warn(f"{len(stale)} record(s) of {', '.join(sorted({r['model'] for r in stale}))} were made by an older "
             "version of the model's source files than its latest record, or of its preset than its cell's latest "
             "record, and are left out; rerun their commands to include them"
             + (": " + "; ".join(f"`{c}`" for c in commands) if commands else ""))
    best: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = (*cell_key(record), record["seed"])
        if key not in best or completeness(record) > completeness(best[key]):
            best[key] = record
    kept = sorted(best.values(), key=lambda r: r["run_id"])
    return kept, len(records) - len(kept)
