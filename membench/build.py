"""Building a run's model: the device it runs on, the model from its preset (learned) or its spec's options
(untrained), and a trained one loaded from its checkpoint for figures and diagnostics.

Every path that needs a run's model (the runner, `--no-train`'s checks, fresh reads, Ray workers, figures,
throughput) builds it here, so a model is built one way everywhere.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from membench.checkpoints import checkpoint_path, load_checkpoint
from membench.errors import MembenchError, UnknownOption
from membench.interface import AssociativeMemory, Preset, resolve_preset
from membench.options import check_constructor_options, plain_config
from membench.registry import is_builtin_model, make_task, resolve_model, user_model_error
from membench.run_identity import checkpoint_key, recorded_preset
from membench.run_spec import RunSpec
from membench.tasks import Task, seed_all


def check_device_name(device: str) -> None:
    """MembenchError unless `device` is auto, cpu or cuda."""
    if device not in ("auto", "cpu", "cuda"):
        raise MembenchError(f"unknown device '{device}'. Valid devices: auto, cpu, cuda")


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; fixes float32 matmul precision (no TF32)."""
    check_device_name(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise MembenchError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def build_model(spec: RunSpec, task: Task, preset: Preset | None = None) -> AssociativeMemory:
    """The run's model: a learned model from its preset (resolved here, once, with the run's options,
    unless a resolved `preset` is given, as `load_trained` gives a record's)."""
    cls = resolve_model(spec.model)
    if inspect.isabstract(cls):
        missing = ", ".join(f"{name}()" for name in sorted(cls.__abstractmethods__))
        raise MembenchError(f"model '{spec.model}' does not implement {missing}: every model implements "
                            "memory_floats(), write() and read() (README: Adding a model)")
    try:
        if cls.trainable:  # through from_preset, whatever from_spec a class it inherits from sizes itself with
            if preset is None:
                preset = resolve_preset(cls, task.spec, spec.preset, spec.options, spec.model)
            model = cls.from_preset(task.spec, spec.budget, preset)
        else:
            check_constructor_options(cls, spec.model, spec.options)
            model = cls.from_spec(task.spec, spec.budget, **spec.options)
    except TypeError as exc:
        unknown = not cls.trainable and not _takes(cls, spec.options)  # (a learned model's: resolve_options')
        why = (str(exc).splitlines() or [""])[0]  # torch's own messages go on with its C++ stack
        if not unknown and not is_builtin_model(cls):
            if user_model_error(spec.model, exc, "") is not None:
                raise  # raised in the model's own code: errors_of_user_model names its line
            name = cls.__name__
            how = (f"{name}.from_preset(spec, budget, preset)" if cls.trainable
                   else f"{name}.from_spec(spec, budget, **options), by default {name}(spec, **options); a model "
                        "sized by the budget overrides from_spec")
            learned_looking = not cls.trainable and any(  # its own presets or meta_loss (qualname: a classmethod too)
                getattr(getattr(cls, method, None), "__qualname__", None)
                != getattr(AssociativeMemory, method).__qualname__
                for method in ("presets", "meta_loss"))
            forgot = (f" {name} defines presets or meta_loss but trainable is False: a meta-learned model sets "
                      "trainable = True" if learned_looking else "")
            raise MembenchError(f"cannot build model '{spec.model}': {why}. It is built as {how} (README: Adding "
                                f"a model).{forgot}") from None
        taken = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "spec")]
        its = ("" if cls.trainable else f" Its options: {', '.join(taken)}" if taken
               else " It takes no options: drop --option")
        raise (UnknownOption if unknown else MembenchError)(
            f"cannot build model '{spec.model}' with options {spec.options}: {why}.{its}") from None
    if not isinstance(model, AssociativeMemory) or "_parameters" not in vars(model):
        what = ("its __init__ does not call super().__init__() (nn.Module's, first)" if isinstance(model, nn.Module)
                else f"{'from_preset' if cls.trainable else 'from_spec'} returned a {type(model).__name__}, not the model")
        raise MembenchError(f"model '{spec.model}': {what}")
    if cls.trainable:
        if not any(parameter.requires_grad for parameter in model.parameters()):
            raise MembenchError(f"model '{spec.model}' is meta-learned (trainable = True) but has no parameters to "
                                "train: hold what it learns in torch.nn.Parameter attributes (a plain tensor with "
                                "requires_grad is not registered), or set trainable = False")
        model.preset = preset
    plain_config(model.config(), spec.model)  # a config no record can store is refused before any run
    return model


def _takes(cls: type, options: dict[str, Any]) -> bool:
    """Whether the constructor of `cls` (a model that is not trained) takes every key of `options`."""
    try:
        inspect.signature(cls.__init__).bind_partial(None, None, **options)  # self, spec
    except TypeError:
        return False
    return True


def load_trained(spec: RunSpec, checkpoint_dir: Path, preset_config: dict[str, Any] | None = None
                 ) -> tuple[Task, AssociativeMemory, Path | None]:
    """Rebuild a run's model as the runner does, on the CPU, and load its trained checkpoint, if on this machine.

    With a record's `preset_config` (a learned model's), the model is rebuilt as that record's run trained
    it, even where the preset has changed since (`recorded_preset`). Returns (task, model, checkpoint path); the path is
    None when a learned model's checkpoint is absent (the model is then untrained). Used for figures
    and diagnostics drawn after the run.
    """
    task = make_task(spec.task)
    preset = recorded_preset(spec, task.spec, preset_config) if preset_config is not None else None
    seed_all(spec.seed)
    model = build_model(spec, task, preset)
    path = None
    if model.trainable:
        candidate = checkpoint_path(checkpoint_key(spec, model, task), checkpoint_dir, model)
        path = candidate if load_checkpoint(candidate, model, set_aside=False) is not None else None
    model.eval()
    return task, model, path
