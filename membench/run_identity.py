"""What identifies a trained run: its checkpoint key, whether its stored record is current, the preset it trained with.

A learned model's checkpoint is keyed by a digest of everything its training depends on (`checkpoint_key`), its
record by the run id (which names the preset, not the preset's fields: `is_current` compares the fields), and a
record stores its preset's fields (`preset_config`) so the model can be rebuilt as trained (`recorded_preset`).
Fields added to the configs after checkpoints were shipped (LATE_FIELDS) are left out of all three while at their
defaults, so configurations that do not use them keep their keys, records and shipped checkpoints.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from membench.checkpoints import checkpoint_path, default_checkpoint_dir, readable_checkpoint, weights_digest
from membench.interface import AssociativeMemory, Preset, TaskSpec, resolve_preset
from membench.options import plain_config
from membench.registry import make_task, model_source_digest, model_source_files, resolve_model
from membench.records import read_record
from membench.run_spec import RunSpec
from membench.store import ResultsStore, warn
from membench.tasks import Task

# Config fields added after checkpoints were shipped, with their defaults: left out of checkpoint keys
# while at the default, so configurations that do not use them keep their keys (and shipped checkpoints).
LATE_FIELDS = {  # config part -> {field: default}
    "model": {"write_norm_power": None, "learn_write_norm": False, "grad_norm_lr_init": None, "read_known": True,
              "stepwise_loss": True, "centre_memory": False, "linear_memory": False, "init_gate_bias": None,
              "identity_query": False, "elementwise_write_lr": False, "centre_tracking": 0.0,
              "symmetric_trace": False, "hebbian_init": False, "init_gain": 1.0,
              "n_scaled_rates": False, "precondition_write": None, "contrast_steps": None, "contrast_erase": 0.5,
              "contrast_lr_init": 0.01, "denoise_steps": None, "denoise_lr_init": 0.01,
              "signed_input": True, "write_momentum": None},
    "train": {"curriculum_steps": 0, "precision": "float32", "warmup_steps": 0},
}


def _without_late(fields: dict[str, Any], late: dict[str, Any]) -> dict[str, Any]:
    """`fields` without the late fields that are at their defaults."""
    return {name: value for name, value in fields.items() if name not in late or value != late[name]}


def comparable_preset(preset: dict[str, Any]) -> dict[str, Any]:
    """A preset's dict (`Preset.to_dict`, or as stored in a record) as JSON, without what does not change
    the numbers (how updates run, like the device: `compile` left out, `cuda_graph` read as off, as every
    preset had it when keys were first shipped) and without late fields at their defaults."""
    preset = json.loads(json.dumps(preset, default=str))
    preset["train"].pop("compile", None)
    if "cuda_graph" in preset["train"]:  # replayed updates equal eager ones (tests, make gpu-graph-check)
        preset["train"]["cuda_graph"] = False
    return {part: _without_late(preset[part], LATE_FIELDS[part]) for part in ("model", "train")}


def pending(specs: list[RunSpec], store: ResultsStore, force: bool, train: bool, checkpoint_dir: Path) -> list[RunSpec]:
    """The runs of `specs` still to be made in `store`, each once: every one with `force`, else those not
    `is_current`."""
    unique = list({spec.run_id: spec for spec in specs}.values())
    return [spec for spec in unique if force or not is_current(spec, store, train, checkpoint_dir)]


def is_current(spec: RunSpec, store: ResultsStore, train: bool = True, checkpoint_dir: Path | None = None) -> bool:
    """True when `spec` has a complete record made with today's definition of its preset and, for a model
    from outside membench, today's source file (`registry.model_source_digest`). A learned model's run id
    names its preset, not the preset's fields: a record made before the preset changed is stale (warned
    about), and its run is done again. A record older than stored presets is judged by the training fields
    it does hold (`training.config`); one holding neither is taken as current. A record of a checkpoint
    whose training was paused (`--no-train`) is current only for a run that does not `train`, and only while
    that checkpoint (in `checkpoint_dir`, or shipped) stands where it did: a run that trains trains it on,
    and either replaces the record."""
    if not store.has(spec.run_id):
        return False
    cls = resolve_model(spec.model)
    record = read_record(store.record_path(spec.run_id))
    digest = model_source_digest(cls)
    recorded_source = record.get("model_source")
    if digest is not None and recorded_source != digest:
        why = "changed since its record was made" if recorded_source else "is not in its record (an older membench)"
        files = ", ".join(str(path) for path in model_source_files(cls))
        warn(f"{spec.run_id}: the source of {spec.model} ({files}) {why}; running it again")
        return False
    if not cls.trainable:
        return True
    today = comparable_preset(resolve_preset(cls, make_task(spec.task).spec, spec.preset, spec.options).to_dict())
    recorded = record.get("preset_config")
    training = record.get("training") or {}
    if recorded is not None:
        current = comparable_preset(recorded) == today
    else:
        trained = comparable_preset({"model": {}, "train": training.get("config") or {}})
        current = all(today["train"].get(name, value) == value for name, value in trained["train"].items())
    if not current:
        warn(f"{spec.run_id}: its record was made with an older definition of preset '{spec.preset}'; running it again")
        return False
    return training.get("finished") is not False or _paused_record_current(spec.run_id, training, train, checkpoint_dir)


def _paused_record_current(run_id: str, training: dict[str, Any], train: bool, checkpoint_dir: Path | None) -> bool:
    """`is_current` for a record of a paused checkpoint (`--no-train`): current for a run that does not `train`
    while the checkpoint (in `checkpoint_dir`, or shipped) stands at the record's step; otherwise warned about."""
    planned, steps = (training.get("config") or {}).get("steps"), training.get("steps")
    path = checkpoint_path(training["checkpoint_key"], checkpoint_dir or default_checkpoint_dir())
    saved = readable_checkpoint(path)
    now = saved["step"] if saved is not None else -1
    paused_at = f"{run_id}: its record was made from a checkpoint paused at step {steps} of {planned}"
    if planned is not None and now >= planned:
        warn(f"{paused_at}, which has finished training since; evaluating it again")
        return False
    if train:
        warn(f"{paused_at}; training it on")
        return False
    if steps is not None and now >= 0 and now != steps:  # (gone or unreadable: the record stands as it was made)
        warn(f"{paused_at}, now at step {now:g} (trained on or again since); evaluating it again")
        return False
    recorded = training.get("weights_digest")
    if saved is not None and recorded is not None and weights_digest(saved["model"]) != recorded:
        warn(f"{paused_at}, whose weights have changed since (trained again, to step {now:g}); evaluating it again")
        return False
    return True

def checkpoint_key(spec: RunSpec, model: AssociativeMemory, task: Task) -> str:
    """File stem of a learned model's checkpoint: a digest of everything its training depends on
    (model, complete preset, built sizes, task, seed, budget; an outside model's source file), so identical
    training is shared."""
    task_config = dict(task.config())
    if model.preset.train.num_patterns:
        task_config.pop("num_patterns")  # trained on a set of N: one checkpoint for all
    payload = {"model": spec.model, "preset": comparable_preset(model.preset.to_dict()),
               "model_config": _without_late(plain_config(model.config(), spec.model), LATE_FIELDS["model"]),
               "task": task_config, "seed": spec.seed, "budget": spec.budget}
    source = model_source_digest(type(model))
    if source is not None:  # a model from outside membench: its code changed, it trains again
        payload["source"] = source
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{spec.model.replace(':', '-')}-{spec.preset}-{digest}"


def _from_json(value: Any) -> Any:
    """A config value as read back from a record's JSON: lists (at any depth) as tuples."""
    return tuple(_from_json(item) for item in value) if isinstance(value, list) else value


def recorded_preset(spec: RunSpec, task_spec: TaskSpec, preset_config: dict[str, Any]) -> Preset:
    """The preset a record stores (`preset_config`, `Preset.to_dict`) as today's Preset classes, so a model is
    rebuilt as it was trained even where the preset's definition has changed since: today's preset with the
    recorded value of every field that differs (a late field a record leaves out: its default). A field
    today's configs lack, or one the record lacks that is not late, keeps today's value, with a warning."""
    today = resolve_preset(resolve_model(spec.model), task_spec, spec.preset, spec.options)
    now, then = comparable_preset(today.to_dict()), comparable_preset(preset_config)
    parts = {}
    for part in ("model", "train"):
        config, late = getattr(today, part), LATE_FIELDS[part]
        known = {field.name for field in dataclasses.fields(config)}
        changed = {name: _from_json(then[part].get(name, late.get(name)))
                   for name in then[part].keys() | (now[part].keys() & late.keys())  # late fields left out: default
                   if name in known and now[part].get(name, late.get(name)) != then[part].get(name, late.get(name))}
        parts[part] = dataclasses.replace(config, **changed)
    preset = Preset(**parts)
    rebuilt = comparable_preset(preset.to_dict())
    if rebuilt != then:
        fields = sorted(f"{prefix}{name}" for part, prefix in (("model", ""), ("train", "train."))
                        for name in rebuilt[part].keys() | then[part].keys()
                        if rebuilt[part].get(name) != then[part].get(name))
        warn(f"{spec.run_id}: its record's preset differs from this membench's in {', '.join(fields)}, which "
             "this membench cannot rebuild; the model keeps today's values there")
    return preset
