"""The one interface every memory model implements, and the preset shape of learned models.

A memory is used in two phases, batched over B independent episodes:

    state = model.write(patterns)            # patterns (B, N, *S) -> state
    retrievals = model.read(state, queries)  # queries (B, Q, *S) -> retrievals (B, Q, *S)

The contract, which the runner checks on every run (membench.budget, membench.integrity,
membench.fresh_read):
- everything the memory knows about the written set lives in the returned state: tensors,
  NumPy arrays and Python numbers (or tuples, lists, dicts and dataclasses of them), each
  episode's own with the B episodes on their first dimension, laid out alike by every write
  of a run. The runner counts the values in that state (every storage byte / 4, so other
  dtypes do not escape the count) and refuses a run whose count differs from `memory_floats`
  or exceeds the budget. `read` is given a copy of
  the measured values alone (`membench.budget.sealed`: new tensors laid out afresh, plain containers), so
  nothing hidden beside them (an attribute on a tensor, a cache keyed by the state object)
  reaches it, and returns a plain floating tensor;
- `write` leaves the model unchanged (parameters, buffers and plain attributes), and an
  episode's retrievals depend on that episode alone (a learned model is checked before and
  after training);
- a model from outside membench reads every batch from seed 0 and gives the retrievals the run
  scored from the same states in a fresh interpreter, rebuilt from its run and weights (no
  module-level table stands in for the state), and errs on episodes no seed foresees as it
  errs on the evaluated ones.
A learned model is built through `from_preset`; any other through `from_spec`.

Models that must be meta-trained set `trainable = True`, list their presets with
`presets` (each a `Preset`: the model's configuration and its `TrainConfig`), build from
one with `from_preset` and implement `meta_loss`; one that needs a data-dependent initialisation
overrides `initialise`, which the training loop calls once on a fresh model with train-split
patterns; one that keeps statistics outside the meta-gradient overrides `after_update`, which the
training loop calls after every update (resumed runs too) with that update's patterns. The runner
resolves the preset once (`resolve_preset`, options applied), builds the model from it and trains it
with `membench.training.meta_train`, the single training loop shared by every learned model.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from membench.errors import MembenchError, UnknownOption
from membench.options import declared_value, is_finite, is_int, type_hints

MemoryState = Any  # whatever `write` returns; only the same model's `read` looks inside


@dataclass(frozen=True)
class TaskSpec:
    """What a model may know about the task when it is built.

    pattern_shape: shape of one pattern, e.g. (128,) or (3, 32, 32)
    num_patterns: N, patterns written per episode
    binary: True when patterns are in {0, 1} (errors counted in bits)
    fill_value: value that marks erased / corrupted entries in a query (the midpoint)
    clamp_known: True when every query entry other than fill_value is the pattern's own (erasure,
        blocks), so a model may keep those entries; False when any entry may be corrupted (bit
        flips), so a model must be free to change every entry
    """

    pattern_shape: tuple[int, ...]
    num_patterns: int
    binary: bool = True
    fill_value: float = 0.5
    clamp_known: bool = True

    @property
    def pattern_size(self) -> int:
        size = 1
        for dim in self.pattern_shape:
            size *= dim
        return size


PRECISIONS = ("float32", "tf32", "bf16")  # TrainConfig.precision
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # TrainConfig.lr and clip_norm: normal float32 numbers
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000                 # optimiser updates
    batch_size: int = 16              # episodes per update
    lr: float = 5e-5                  # AdamW learning rate (paper: 5e-5)
    weight_decay: float = 1e-6        # AdamW weight decay (paper: 1e-6)
    clip_norm: float = 0.05           # global gradient-norm clip (paper: 0.05)
    cosine_decay: bool = False        # decay lr along a half cosine to 0 at `steps` (paper: constant)
    warmup_steps: int = 0             # raise lr linearly over the first this many steps, from lr / warmup_steps at
    #   the first (then the cosine, if on, from where it stands); 0: the full lr from the start
    log_every: int = 25               # steps between curve rows
    checkpoint_every: int = 100       # steps between checkpoints
    num_patterns: tuple[int, ...] | None = None  # train on N drawn from this set each step
    #   (one checkpoint then serves every N); None: train on the run's N only
    curriculum_steps: int = 0         # with num_patterns: over the first this many steps draw N from its smallest
    #   k values only, k growing evenly from 1 to all (0: all from the start)
    cuda_graph: bool = False          # on CUDA, replay each update from a captured graph (membench.stepper)
    compile: bool = False             # torch.compile the meta-loss (inductor: one compile for every N, one per N
    #   where the meta-loss loops over the patterns in Python); eager where compiling fails. How the update
    #   runs, like the device: not part of the checkpoint key
    precision: str = "float32"        # arithmetic of the meta-loss and its backward: float32 (highest matmul
    #   precision); tf32 (CUDA: TF32 matmuls and convolutions); bf16 (autocast to bfloat16: CUDA, or a CPU
    #   with native bfloat16 such as AMX). Evaluation is float32 at the highest precision whatever trained

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MembenchError(f"unknown precision '{self.precision}' (train.precision); valid: {', '.join(PRECISIONS)}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise MembenchError(f"train.{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("curriculum_steps", "warmup_steps"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise MembenchError(f"train.{name}={getattr(self, name)!r} must be a non-negative integer")
        for name, high in (("lr", FLOAT32_MAX * 0.1), ("clip_norm", FLOAT32_MAX)):  # the optimiser and clipping
            #   compute in float32, and AdamW's first update divides the rate by 1 - beta1 = 0.1
            if not is_finite(getattr(self, name)) or not FLOAT32_TINY <= getattr(self, name) <= high:
                raise MembenchError(f"train.{name}={getattr(self, name)!r} must be a positive finite float32 number "
                                    f"(from {FLOAT32_TINY:.4g} to {high:.4g})")
        if not is_finite(self.weight_decay) or self.weight_decay < 0:
            raise MembenchError(f"train.weight_decay={self.weight_decay!r} must be a non-negative finite number")
        if self.num_patterns is not None:
            sizes = (self.num_patterns,) if is_int(self.num_patterns) else self.num_patterns
            if not isinstance(sizes, (tuple, list)) or not sizes or not all(is_int(n) and n > 0 for n in sizes):
                raise MembenchError(f"train.num_patterns={self.num_patterns!r} must be null or a list of positive "
                                    "integers such as [16,32,48]")
            object.__setattr__(self, "num_patterns", tuple(sizes))


@dataclass(frozen=True)
class Preset:
    """A learned model's complete configuration: `model` (its frozen config dataclass) and `train`.

    Run options override fields of `model`; the checkpoint key hashes the whole preset.
    """

    model: Any
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}


def resolve_preset(cls: type["AssociativeMemory"], spec: TaskSpec, name: str,
                   options: Mapping[str, Any], label: str | None = None) -> Preset:
    """`cls.presets(spec, options)[name]` with `options` applied: a key `train.FIELD` sets a field of its
    TrainConfig (e.g. train.steps, train.num_patterns), any other key a field of its model config.

    Raises MembenchError naming the model (`label`, as the run names it; else the class's name), and the valid
    presets or options, on a bad name.
    """
    return resolve_options(cls, spec, name, options, label)[0]


def resolve_options(cls: type["AssociativeMemory"], spec: TaskSpec, name: str,
                    options: Mapping[str, Any], label: str | None = None) -> tuple[Preset, dict[str, Any]]:
    """`resolve_preset`'s preset, and `options` as it applied them (an int given for a float field made that
    float: `gain_init=2` and `gain_init=2.0` are one run)."""
    train_options = {key[len("train."):]: value for key, value in options.items() if key.startswith("train.")}
    model_options = {key: value for key, value in options.items() if not key.startswith("train.")}
    presets = cls.presets(spec, model_options)
    label = label or cls.name or cls.__name__
    if name not in presets:
        raise MembenchError(f"model '{label}' has no preset '{name}'. Its presets: {', '.join(presets)}")
    preset = presets[name]
    if not isinstance(preset, Preset):
        wrong = f"a {type(preset).__name__}"
    elif isinstance(preset.model, type):
        wrong = f"a Preset whose model config is the class {preset.model.__name__}, not an instance of it"
    elif not dataclasses.is_dataclass(preset.model):
        wrong = f"a Preset whose model config is a {type(preset.model).__name__}, not a dataclass instance"
    elif not isinstance(preset.train, TrainConfig):
        wrong = f"a Preset whose train config is a {type(preset.train).__name__}, not a TrainConfig"
    else:
        wrong = None
    if wrong:
        raise MembenchError(f"model '{label}': presets() maps '{name}' to {wrong}; it must map each name to "
                            "membench.interface.Preset(<a frozen config dataclass>, TrainConfig(...))")
    for config, given, prefix in ((preset.model, model_options, ""), (preset.train, train_options, "train.")):
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise UnknownOption(f"model '{label}' has no option {', '.join(repr(prefix + u) for u in unknown)}. "
                                f"Its options: {', '.join(prefix + f for f in sorted(fields))}")
        hints = type_hints(type(config))
        for key, value in given.items():  # checked against the field's declared type (else its default's)
            given[key] = declared_value(label, prefix + key, value, getattr(config, key), hints.get(key))
    applied = {**model_options, **{f"train.{key}": value for key, value in train_options.items()}}
    return (Preset(dataclasses.replace(preset.model, **model_options),
                   dataclasses.replace(preset.train, **train_options)), {key: applied[key] for key in options})


_NOT_LEARNED = ("model {name} does not implement {method}(): a meta-learned model (trainable = True) implements "
                "presets(), from_preset() and meta_loss() (README: Adding a model); a model that is not trained "
                "sets trainable = False")


class AssociativeMemory(nn.Module, abc.ABC):
    """Base class of every model in membench.

    Inputs and outputs are float32 tensors with values in [0, 1]. `self.preset` is the
    resolved Preset of a learned model (None for the others).
    """

    name: ClassVar[str] = ""           # registry name, e.g. "hopfield_hebb"
    trainable: ClassVar[bool] = False  # True: runner meta-trains before evaluating
    preset: Preset | None = None

    @classmethod
    def from_spec(cls, spec: TaskSpec, budget: int, preset: str | Preset = "quick",
                  **options: Any) -> "AssociativeMemory":
        """Build the model for a task and a float32 budget.

        Learned models: `preset` is a name (resolved here with `options`) or a resolved Preset; the
        model comes from `from_preset` (the runner calls that directly, so an override here does not
        change how a learned model is built for a run). Others: `cls(spec, **options)`; override to
        size the model to the budget (e.g. as many slots as fit); the runner gives them "quick" whatever
        --preset says (preflight.checked_specs), so they must not depend on it.
        """
        if not cls.trainable:
            return cls(spec, **options)
        if not isinstance(preset, Preset):
            preset = resolve_preset(cls, spec, preset, options)
        elif options:
            raise TypeError("give options either inside the resolved Preset or with a preset name, not both")
        model = cls.from_preset(spec, budget, preset)
        model.preset = preset
        return model

    @abc.abstractmethod
    def memory_floats(self, spec: TaskSpec) -> int:
        """Number of float32 values the state returned by `write` holds per episode, for N of `spec`."""

    @abc.abstractmethod
    def write(self, patterns: torch.Tensor) -> MemoryState:
        """Store patterns (B, N, *S) for B independent episodes; return the memory state."""

    @abc.abstractmethod
    def read(self, state: MemoryState, queries: torch.Tensor) -> torch.Tensor:
        """Retrieve from queries (B, Q, *S) with erased entries at spec.fill_value; same shape out."""

    def config(self) -> dict[str, Any]:
        """JSON-able facts of the built model (sizes derived from the budget); in checkpoint keys and records."""
        return {}

    # --- meta-learned models only -------------------------------------------------
    @classmethod
    def presets(cls, spec: TaskSpec, options: Mapping[str, Any]) -> Mapping[str, Preset]:
        """Preset name -> Preset for this task (`options` for models whose defaults depend on one)."""
        raise MembenchError(_NOT_LEARNED.format(name=cls.__name__, method="presets"))

    @classmethod
    def from_preset(cls, spec: TaskSpec, budget: int, preset: Preset) -> "AssociativeMemory":
        """Build a learned model from its resolved preset."""
        raise MembenchError(_NOT_LEARNED.format(name=cls.__name__, method="from_preset"))

    def initialise(self, patterns: torch.Tensor) -> None:
        """Data-dependent initialisation of a fresh learned model, once, before its first meta-training step
        (not on resume): patterns (B, N, *S) drawn from the train split. Default: nothing."""

    def after_update(self, patterns: torch.Tensor) -> None:
        """Called by the training loop, without gradients, after every meta-training update with the patterns
        (B, N, *S) that update wrote, on the model's device: for statistics kept outside the meta-gradient
        (EBMM's `centre_tracking`), held in parameters or buffers so that checkpoints keep them. Not called
        by the throughput benchmark. Default: nothing."""

    def meta_loss(self, patterns: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable training loss of one batch of episodes, and the retrievals.

        patterns (B, N, *S) are written, queries (B, N, *S) are their corrupted versions
        (query i belongs to pattern i). Returns (scalar loss, retrievals (B, N, *S)); the
        training loop logs the task's error of the retrievals.
        """
        raise MembenchError(_NOT_LEARNED.format(name=type(self).__name__, method="meta_loss"))
