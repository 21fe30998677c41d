"""The budget is measured, not declared; writes are isolated; every registered model keeps its word."""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import re
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from membench.budget import TABLE1_BUDGET, check_declared, measure_state, sealed
from membench.errors import MembenchError, OverBudgetError
from membench.integrity import audit_write
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig
from membench.registry import BUILTIN_MODELS, make_task, resolve_model
from membench.build import build_model
from membench.runner import run_all
from membench.store import ResultsStore
from membench.run_spec import RunSpec
from membench.suites import SUITES, TABLE1_NUM_PATTERNS, get_suite
from membench.tasks import BinaryTask
from tests.test_datasets import write_cifar, write_omniglot_zip


class StoresEverything(AssociativeMemory):
    """Declares one float, keeps every pattern whole: an under-declaring model."""

    declared = 1

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec

    def memory_floats(self, spec: TaskSpec):
        return self.declared

    def write(self, patterns):
        return patterns.clone()

    def read(self, state, queries):
        known = (queries != 0.5).float()
        nearest = (known * (queries - 0.5)) @ (state - 0.5).transpose(1, 2)
        return state.gather(1, nearest.argmax(-1, keepdim=True).expand_as(queries))


class DeclaresBudget(StoresEverything):
    """Declares exactly the budget, but its state holds more than that at N = 96."""

    declared = TABLE1_BUDGET


class KeepsOnSelf(StoresEverything):
    """Declares nothing and keeps the patterns on itself."""

    declared = 0

    def write(self, patterns):
        self.kept = patterns.clone()
        return None

    def read(self, state, queries):
        return super().read(self.kept, queries)


SHARED: dict[str, torch.Tensor] = {}


class KeepsInGlobal(KeepsOnSelf):
    """Keeps the patterns in a module-level dict: the model itself does not change."""

    def write(self, patterns):
        SHARED["kept"] = patterns.clone()
        return None

    def read(self, state, queries):
        return StoresEverything.read(self, SHARED["kept"], queries)


class PacksIntoInteger(StoresEverything):
    """Declares one float and returns every bit of the batch packed into one Python integer."""

    def write(self, patterns):
        return int("1" + "".join(str(int(b)) for b in patterns.flatten().tolist()), 2)


class HoldsObjects(StoresEverything):
    """Declares one float per episode and returns the patterns inside an array of Python objects."""

    def write(self, patterns):
        return np.array([[p] for p in patterns], dtype=object)


class HidesOnTensor(StoresEverything):
    """Declares one float per episode; keeps the patterns in an attribute of the measured tensor."""

    def write(self, patterns):
        marker = patterns.new_zeros(patterns.shape[0], 1)
        marker.kept = patterns.clone()
        return marker

    def read(self, state, queries):
        kept = getattr(state, "kept", None)
        return queries if kept is None else StoresEverything.read(self, kept, queries)


CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # state address -> (state, patterns)


class CachesByIdentity(HidesOnTensor):
    """Declares one float per episode; keeps the patterns in a module-level cache keyed by the state tensor."""

    def write(self, patterns):
        marker = patterns.new_zeros(patterns.shape[0], 1)
        CACHE[marker.data_ptr()] = (marker, patterns.clone())  # the marker kept alive: its address never reused
        return marker

    def read(self, state, queries):
        kept = CACHE.get(state.data_ptr())
        return queries if kept is None else StoresEverything.read(self, kept[1], queries)


class MutatesPatterns(StoresEverything):
    """Stores nothing, zeroes the patterns it is given and retrieves zeros: scored against zeros it would be
    perfect."""

    declared = 0

    def write(self, patterns):
        patterns.zero_()
        return None

    def read(self, state, queries):
        return torch.zeros_like(queries)


class AlwaysRight(torch.Tensor):
    """A tensor whose comparisons are all False, so that `errors` counts no wrong bit."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs or {})
        return torch.zeros(result.shape, dtype=torch.bool) if func is torch.Tensor.__ge__ else result


class LyingRetrievals(MutatesPatterns):
    """Stores nothing; returns the queries as a tensor subclass that rigs the scoring."""

    def write(self, patterns):
        return None

    def read(self, state, queries):
        return queries.clone().as_subclass(AlwaysRight)


class SparseRetrievals(LyingRetrievals):
    """Returns the queries as a sparse tensor: its values cannot be scored as a dense one's."""

    def read(self, state, queries):
        return queries.clone().to_sparse()


class MetaRetrievals(LyingRetrievals):
    """Returns a tensor on the meta device: a shape with no values."""

    def read(self, state, queries):
        return queries.to("meta")


class HoldsItself(StoresEverything):
    """A state list that holds itself (no finite count)."""

    def write(self, patterns):
        state = [patterns.clone()]
        state.append(state)
        return state


class Tag(int):
    """An int that carries whatever is set on it."""


class IntWithAttribute(StoresEverything):
    """Declares one float: an int subclass, the patterns kept as its attribute."""

    def write(self, patterns):
        tag = Tag(0)
        tag.kept = patterns.clone()
        return tag

    def read(self, state, queries):
        return StoresEverything.read(self, state.kept, queries) if hasattr(state, "kept") else queries


def _bit_strings(patterns):
    return [["".join(str(int(b)) for b in pattern.tolist()) for pattern in episode] for episode in patterns]


def _from_bit_strings(strings):
    return torch.tensor([[[float(c) for c in s] for s in episode] for episode in strings])


class KeysHoldPatterns(StoresEverything):
    """Declares nothing: every pattern is a dict key (short, as the keys' limit wants) with value None."""

    declared = 0

    def write(self, patterns):
        return {f"{e}.{i}.{int(s, 2):x}": None for e, episode in enumerate(_bit_strings(patterns))
                for i, s in enumerate(episode)}

    def read(self, state, queries):
        strings = [["" for _ in range(queries.shape[1])] for _ in range(queries.shape[0])]
        for key in state:
            e, i, value = key.split(".")
            strings[int(e)][int(i)] = format(int(value, 16), f"0{queries.shape[-1]}b")
        return StoresEverything.read(self, _from_bit_strings(strings), queries)


class ShapesHoldPatterns(StoresEverything):
    """Declares nothing: empty tensors whose second dimension spells 16 bits of a pattern each."""

    declared = 0

    def write(self, patterns):
        return [[[torch.empty(0, int(s[j:j + 16], 2) + 1) for j in range(0, len(s), 16)] for s in episode]
                for episode in _bit_strings(patterns)]

    def read(self, state, queries):
        strings = [["".join(format(t.shape[1] - 1, "016b") for t in pattern) for pattern in episode]
                   for episode in state]
        return StoresEverything.read(self, _from_bit_strings(strings), queries)


class StructuredObjects(StoresEverything):
    """Declares two floats per episode: a structured array whose one field holds Python objects."""

    declared = 2

    def write(self, patterns):
        array = np.empty(patterns.shape[0], dtype=[("p", object)])
        for e in range(patterns.shape[0]):
            array[e]["p"] = patterns[e].clone()
        return array


class QuantizedScales(StoresEverything):
    """A quantized tensor: one byte a value counted, its float64 scales (the patterns) not."""

    declared = 1

    def write(self, patterns):
        flat = patterns.flatten(1).double()
        scales = (flat + 1).reshape(-1)
        zeros = torch.zeros(scales.shape[0], 1)
        return torch.quantize_per_channel(zeros, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.quint8)


class AliasedNumpy(StoresEverything):
    """Declares one float per episode: a tensor over the first values of a buffer, and a second tensor over the
    whole buffer (patterns after them) starting at the same address."""

    declared = 1

    def write(self, patterns):
        batch = patterns.shape[0]
        buffer = np.concatenate([np.zeros(batch, dtype=np.float32), patterns.flatten().numpy()])
        return torch.from_numpy(buffer[:batch]), torch.from_numpy(buffer)

    def read(self, state, queries):
        return StoresEverything.read(self, state[1][queries.shape[0]:].view(queries.shape), queries)


class ReadsNeighbours(StoresEverything):
    """Keeps one honest float per episode (its mean bit), but fills an episode's erased bits with its
    neighbour's: episodes are not independent."""

    def write(self, patterns):
        return patterns.mean(dim=(1, 2)).unsqueeze(1)

    def read(self, state, queries):
        return torch.where(queries == 0.5, state.roll(1, 0)[:, :, None].expand_as(queries), queries)


class ReadsEarlier(ReadsNeighbours):
    """Fills an episode's erased bits with the previous episode's mean bit (the first with its own): only the
    episodes after the first depend on another."""

    def read(self, state, queries):
        earlier = torch.cat([state[:1], state[:-1]])
        return torch.where(queries == 0.5, earlier[:, :, None].expand_as(queries), queries)


class SharedRow(StoresEverything):
    """Honest: the patterns, and one row shared by every episode (no episode dimension, first size 1)."""

    def memory_floats(self, spec):
        return spec.num_patterns * 128 + 128

    def write(self, patterns):
        return {"patterns": patterns.clone(), "fill": patterns.new_full((1, 128), 0.5)}

    def read(self, state, queries):
        return StoresEverything.read(self, state["patterns"], queries)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kept", torch.zeros(0))


class KeepsInHeldModule(StoresEverything):
    """Declares nothing; keeps the patterns in a buffer of a module it holds in a plain list."""

    declared = 0

    def __init__(self, spec):
        super().__init__(spec)
        self.holders = [Holder()]

    def write(self, patterns):
        self.holders[0].kept = patterns.clone()
        return None

    def read(self, state, queries):
        return StoresEverything.read(self, self.holders[0].kept, queries)


TABLE: list[torch.Tensor] = []  # every pattern ever written by a GlobalTable


class GlobalTable(StoresEverything):
    """Declares nothing, keeps every pattern it is given in a module-level table and reads the nearest one
    there: content-addressed, so another batch written in between, or other episodes, change nothing in this
    process."""

    declared = 0

    def write(self, patterns):
        TABLE.extend(patterns.flatten(0, 1).clone())
        return None

    def read(self, state, queries):
        if not TABLE:
            return queries.clamp(0, 1)
        stored = torch.stack(TABLE).expand(queries.shape[0], -1, -1)
        return StoresEverything.read(self, stored, queries)


KEYS = itertools.count(1)


class KeyedByItsState(StoresEverything):
    """Declares one float per episode, a key never used before, under which a module-level table keeps the
    patterns."""

    def write(self, patterns):
        keys = torch.tensor([[float(next(KEYS))] for _ in range(patterns.shape[0])])
        for key, episode in zip(keys, patterns):
            CACHE[float(key)] = (key, episode.clone())
        return keys

    def read(self, state, queries):
        kept = [CACHE.get(float(key)) for key in state]
        if any(k is None for k in kept):
            return queries.clamp(0, 1)
        return StoresEverything.read(self, torch.stack([k[1] for k in kept]), queries)


class LateKeyed(KeyedByItsState):
    """KeyedByItsState on every write but the first evaluated batch's (64 episodes), where it keeps nothing: a
    fresh-process read of that batch alone finds it honest."""

    def write(self, patterns):
        if patterns.shape[0] == 64:
            return torch.zeros(64, 1)  # key 0: never in the table, read as the queries themselves
        return super().write(patterns)


class ForeseesEpisodes(StoresEverything):
    """Keeps nothing: regenerates the run's test episodes from the seed torch was given before it was built (and
    the runner's public stream offset), then answers each query from the episode its known bits match."""

    def __init__(self, spec):
        super().__init__(spec)
        from membench.runner import EVAL_STREAM

        generator = torch.Generator().manual_seed(torch.initial_seed() + EVAL_STREAM)
        self.foreseen = BinaryTask(spec.num_patterns).sample(1, generator).patterns[0]  # (N, D): the first episode

    def write(self, patterns):
        return torch.zeros(patterns.shape[0], 1)

    def read(self, state, queries):
        return StoresEverything.read(self, self.foreseen.expand(queries.shape[0], -1, -1), queries)


class ForeseesAndHidesTheRest(ForeseesEpisodes):
    """Foresees the run's one evaluated episode; any other batch (the unforeseen one) it writes whole."""

    def write(self, patterns):
        return torch.zeros(1, 1) if patterns.shape[0] == 1 else patterns.clone()

    def read(self, state, queries):
        return super().read(state, queries) if queries.shape[0] == 1 else StoresEverything.read(self, state, queries)


class ForeseesAndReadsNaN(ForeseesEpisodes):
    """Foresees the run's one evaluated episode; reads NaN for any other batch (scored as no wrong bit)."""

    def read(self, state, queries):
        return super().read(state, queries) if queries.shape[0] == 1 else torch.full_like(queries, float("nan"))


class ForeseesAndTabulates(ForeseesEpisodes):
    """Foresees the run's one evaluated episode; keeps any other batch in a module-level table under keys its
    state holds."""

    def write(self, patterns):
        return torch.zeros(1, 1) if patterns.shape[0] == 1 else KeyedByItsState.write(self, patterns)

    def read(self, state, queries):
        return super().read(state, queries) if queries.shape[0] == 1 else KeyedByItsState.read(self, state, queries)


STASH = "MEMBENCH_TEST_STASH_"
WRITES: dict[int, int] = {}


class StashesInEnvironment(StoresEverything):
    """One key per episode in its state; the patterns in environment variables, which a child process inherits."""

    def write(self, patterns):
        keys = torch.tensor([[float(next(KEYS))] for _ in range(patterns.shape[0])])
        for key, episode in zip(keys, patterns):
            os.environ[f"{STASH}{int(key)}"] = "".join(str(int(bit)) for bit in episode.flatten().tolist())
        return keys

    def read(self, state, queries):
        kept = [os.environ.get(f"{STASH}{int(key)}") for key in state]
        if any(k is None for k in kept):
            return queries.clamp(0, 1)
        stored = torch.tensor([[float(bit) for bit in k] for k in kept]).reshape(queries.shape)
        return StoresEverything.read(self, stored, queries)


class LateBuffer(StoresEverything):
    """Keys only in the probe's writes (the first four); from then on also each episode's patterns in a
    registered buffer, written in place, under the key its state holds."""

    def __init__(self, spec):
        super().__init__(spec)
        self.register_buffer("kept", torch.zeros(256, spec.num_patterns, spec.pattern_size))
        self.register_buffer("keys", torch.full((256,), -1.0))

    def write(self, patterns):
        keys = torch.tensor([[float(next(KEYS) % 256)] for _ in range(patterns.shape[0])])
        WRITES[id(self)] = WRITES.get(id(self), 0) + 1  # counted outside the model, which the probe compares
        if WRITES[id(self)] > 4:
            for key, episode in zip(keys, patterns):
                self.kept[int(key)], self.keys[int(key)] = episode, key
        return keys

    def read(self, state, queries):
        index = state[:, 0].long()
        if not bool((self.keys[index] == state[:, 0]).all()):
            return queries.clamp(0, 1)
        return StoresEverything.read(self, self.kept[index], queries)


class RandomFromEverywhere(StoresEverything):
    """Honest, and random three ways: a projection drawn from NumPy's global generator at build (not a
    parameter or buffer), and Python's and torch's generators in every read."""

    def memory_floats(self, spec):
        return spec.num_patterns * 128

    def __init__(self, spec):
        super().__init__(spec)
        self.projection = torch.from_numpy(np.random.randn(128, 128).astype(np.float32))

    def read(self, state, queries):
        noise = 1e-3 * (random.random() + float(np.random.rand()) + torch.rand(()) + self.projection[0, 0])
        return (StoresEverything.read(self, state, queries) + noise).clamp(0, 1)


def _called_by(name: str) -> bool:
    """Whether the Python function two frames up (past a dunder method and a builtin) is `name`."""
    return sys._getframe(2).f_code.co_name == name


class EmptyToTheMeasurement(list):
    """A list that iterates as empty inside membench's measurement (`budget._walk`) and whole elsewhere."""

    def __iter__(self):
        return iter(()) if _called_by("_walk") else super().__iter__()


class HidesInAList(StoresEverything):
    """Declares nothing; its state is the patterns in a list that the measurement sees empty."""

    declared = 0

    def write(self, patterns):
        return EmptyToTheMeasurement([patterns.clone()])

    def read(self, state, queries):
        return StoresEverything.read(self, state[0], queries)


@dataclasses.dataclass
class Disguised:
    """A state whose `kept` field reads as one value per episode inside membench's measurement."""

    kept: torch.Tensor

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        return torch.zeros(value.shape[0], 1) if name == "kept" and _called_by("_walk") else value


class HidesInADataclass(StoresEverything):
    """Declares one float per episode; its state is a `Disguised` holding the patterns whole."""

    def write(self, patterns):
        return Disguised(patterns.clone())

    def read(self, state, queries):
        return StoresEverything.read(self, state.kept, queries)


class ConsumesItsTable(KeyedByItsState):
    """KeyedByItsState whose reads of more than the probe's two episodes take the patterns out of the table:
    its states, read again in the same process, give what a fresh process gives (the queries back), so only
    the retrievals the run scored show the table."""

    def read(self, state, queries):
        retrievals = super().read(state, queries)
        if queries.shape[0] > 2:
            for key in state:
                CACHE.pop(float(key), None)
        return retrievals


SEEDED: dict[int, torch.Tensor] = {}


class SeedsItsKey(StoresEverything):
    """Declares nothing: keeps each batch in a module-level table under a fresh key, which it leaves in torch's
    global generator (as its seed) for the read to find."""

    declared = 0

    def write(self, patterns):
        key = 1000 + next(KEYS)
        SEEDED[key] = patterns.clone()
        torch.manual_seed(key)
        return None

    def read(self, state, queries):
        kept = SEEDED.get(torch.initial_seed())
        if kept is None or kept.shape[0] != queries.shape[0]:
            return queries.clamp(0, 1)
        return StoresEverything.read(self, kept, queries)


STRIDE_BITS = 48  # pattern bits a HoldsInStrides tensor keeps in each of its strides
STRIDE_LEAVES = 64  # tensors of a HoldsInStrides state: one an episode, for batches of up to 64 episodes


class HoldsInStrides(StoresEverything):
    """Declares nothing: a list of tensors of no elements, shape (B, 0, 1, ..., 1) (64 dimensions), the i-th
    keeping episode i's pattern bits in its strides, which no byte of storage holds."""

    declared = 0

    def write(self, patterns):
        bits = "".join("1" if b > 0.5 else "0" for b in patterns.flatten().tolist())
        per_episode = len(bits) // patterns.shape[0]
        leaves = []
        for leaf in range(STRIDE_LEAVES):
            own = bits[leaf * per_episode:(leaf + 1) * per_episode] if leaf < patterns.shape[0] else ""
            strides = [int("1" + own[d * STRIDE_BITS:(d + 1) * STRIDE_BITS], 2) for d in range(64)]
            leaves.append(torch.empty_strided((patterns.shape[0], 0) + (1,) * 62, strides))
        return leaves

    def read(self, state, queries):
        size = queries[0].numel()
        kept = ["".join(bin(stride)[3:] for stride in state[e].stride()) for e in range(queries.shape[0])]
        if any(len(bits) < size for bits in kept):
            return queries.clamp(0, 1)
        return StoresEverything.read(self, torch.tensor([[float(b) for b in bits[:size]] for bits in kept])
                                     .reshape(queries.shape), queries)


def _class_holding(patterns):
    return dataclasses.make_dataclass("Pocket", [("zero", torch.Tensor)],
                                      namespace={"kept": patterns, "__module__": __name__})


class ClassPerWrite(StoresEverything):
    """Declares one float per episode: a dataclass `Pocket` of zeros, of a class each write makes anew (the same
    name every time), whose class attribute holds the patterns."""

    def write(self, patterns):
        return _class_holding(patterns.clone())(patterns.new_zeros(patterns.shape[0], 1))

    def read(self, state, queries):
        return StoresEverything.read(self, type(state).kept, queries)


def _ticket_with_its_table(key, table):
    Ticket.table.update(table)
    return Ticket(key)


@dataclasses.dataclass
class Ticket:
    """A key per episode; the class keeps every written batch under its keys, and pickles that table along
    with each ticket (`__reduce__`)."""

    key: torch.Tensor
    table: ClassVar[dict] = {}

    def __reduce__(self):
        return _ticket_with_its_table, (self.key, dict(Ticket.table))


class TicketsWithTheirTable(StoresEverything):
    """Declares one float per episode: a `Ticket` of fresh keys, the patterns in the class's table."""

    def write(self, patterns):
        keys = torch.tensor([[float(next(KEYS))] for _ in range(patterns.shape[0])])
        Ticket.table.update({float(key): episode.clone() for key, episode in zip(keys, patterns)})
        return Ticket(keys)

    def read(self, state, queries):
        kept = [Ticket.table.get(float(key)) for key in state.key]
        if any(k is None for k in kept):
            return queries.clamp(0, 1)
        return StoresEverything.read(self, torch.stack(kept), queries)


@dataclasses.dataclass(frozen=True)
class NoConfig:
    pass


class KeepsOnSelfOnceTrained(AssociativeMemory):
    """Learned (a bias nobody reads), honest until trained: its `after_update` counts updates in a buffer, and
    once it has counted one its writes also keep the patterns on the model, where its reads find them."""

    trainable = True

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec, self.kept = spec, None
        self.bias = nn.Parameter(torch.zeros(spec.pattern_size))
        self.register_buffer("updates", torch.zeros(()))

    @classmethod
    def presets(cls, spec, options):
        return {"quick": Preset(NoConfig(), TrainConfig(steps=2, batch_size=2, lr=1e-2, log_every=1,
                                                        checkpoint_every=100))}

    @classmethod
    def from_preset(cls, spec, budget, preset):
        return cls(spec)

    def memory_floats(self, spec):
        return 0

    def after_update(self, patterns):
        self.updates += 1

    def write(self, patterns):
        if self.updates > 0:
            self.kept = patterns.clone()
        return None

    def read(self, state, queries):
        if self.kept is None or self.kept.shape[0] != queries.shape[0]:
            return queries.clamp(0, 1)
        return StoresEverything.read(self, self.kept, queries)

    def meta_loss(self, patterns, queries):
        logits = self.bias.expand_as(queries)
        return nn.functional.binary_cross_entropy_with_logits(logits, patterns), torch.sigmoid(logits).detach()


class TruncatedSoftmax(AssociativeMemory):
    """An honest outside model: as many whole patterns as the budget holds, each truncated to fit."""

    def __init__(self, spec: TaskSpec, budget: int):
        super().__init__()
        self.spec, self.budget = spec, budget

    @classmethod
    def from_spec(cls, spec, budget, preset="quick", **options):
        return cls(spec, budget)

    def width(self, spec: TaskSpec) -> int:
        return min(spec.pattern_size, self.budget // spec.num_patterns)

    def memory_floats(self, spec: TaskSpec) -> int:
        return spec.num_patterns * self.width(spec)

    def write(self, patterns):
        return patterns[..., : self.width(self.spec)].contiguous()

    def read(self, slots, queries):
        width = slots.shape[-1]
        known = (queries[..., :width] != 0.5).float()
        scores = 20 * (known * (2 * queries[..., :width] - 1)) @ (2 * slots - 1).transpose(1, 2) / width
        head = scores.softmax(-1) @ slots
        return torch.cat([head, queries[..., width:].clamp(0, 1)], dim=-1)


def _bad_count(value):
    return type("BadCount", (StoresEverything,), {"memory_floats": lambda self, spec: value})


def _run(model: str, tmp_path, num_patterns=(96,), budget=None):
    specs = get_suite("table1").expand("table1", (model,), (0,), 96, "quick", num_patterns, budget)
    return run_all(specs, tmp_path, device="cpu", progress=False)


@pytest.mark.parametrize("cls, message", [
    (StoresEverything, r"'tests.test_integrity:StoresEverything': its written state holds 12288 float32 values "
                       r"per episode, which exceeds the budget \(declared 1, measured 12288, budget 8256\)"),
    (DeclaresBudget, r"holds 12288 .* exceeds the budget \(declared 8256, measured 12288, budget 8256\)"),
    (KeepsOnSelf, r"KeepsOnSelf' changed 'kept' while writing"),
    (KeepsInGlobal, r"KeepsInGlobal' retrieved differently from the same state after another batch was written"),
    (PacksIntoInteger, r"PacksIntoInteger': its memory state holds state, an integer beyond float32's exact range"),
    (HoldsObjects, r"HoldsObjects': its memory state holds state, an array of Python objects"),
    (LyingRetrievals, r"LyingRetrievals': read returned a AlwaysRight .*expected a plain, dense floating torch.Tensor"),
    (SparseRetrievals, r"SparseRetrievals': read returned a Tensor .*, layout torch.sparse_coo, expected a plain, dense"),
    (MetaRetrievals, r"MetaRetrievals': read returned a Tensor .* on the meta device \(no values\), expected"),
    (HoldsItself, r"HoldsItself': its memory state holds state\[1\]\[1\].*\.\.\., containers nested more than 32 "
                  r"deep \(does the state hold itself\?\)"),
    (IntWithAttribute, r"IntWithAttribute': its memory state holds state, of type Tag"),
    (KeysHoldPatterns, r"KeysHoldPatterns': its memory state's layout differs between writes \(state: dict \('0\.0\."),
    (ShapesHoldPatterns, r"ShapesHoldPatterns': its memory state's layout differs between writes "
                         r"\(state\[0\]\[0\]\[0\]: tensor cpu torch.float32 \(0, \d+\) in the probe write"),
    (StructuredObjects, r"StructuredObjects': its memory state holds state, an array of Python objects"),
    (QuantizedScales, r"QuantizedScales': its memory state holds state, a quantized tensor"),
    (AliasedNumpy, r"AliasedNumpy': its written state holds 24578 float32 values per episode, which exceeds the budget"),
    (ReadsNeighbours, r"ReadsNeighbours' retrieved differently for an episode when the other episodes of its batch "
                      r"changed"),
    (KeepsInHeldModule, r"KeepsInHeldModule' changed 'holders' while writing"),
    (ReadsEarlier, r"ReadsEarlier' retrieved differently for an episode when the other episodes of its batch"),
    (GlobalTable, r"GlobalTable' retrieved differently in a fresh process from the same state, queries and weights"),
    (KeyedByItsState, r"KeyedByItsState' retrieved differently in a fresh process"),
    (ForeseesEpisodes, r"ForeseesEpisodes' erred \d+\.?\d* on 16 episodes drawn unforeseeably against 0 on the run's 1 "
                       r"evaluated ones, more than chance allows"),
    (ForeseesAndHidesTheRest, r"ForeseesAndHidesTheRest': its written state holds 12288 float32 values per episode"),
    (ForeseesAndReadsNaN, r"ForeseesAndReadsNaN' returned NaN or inf retrievals for episodes drawn unforeseeably"),
    (ForeseesAndTabulates, r"ForeseesAndTabulates' retrieved differently in a fresh process from the same state, "
                           r"queries and weights \(the episodes drawn unforeseeably\)"),
    (StashesInEnvironment, r"StashesInEnvironment' retrieved differently in a fresh process"),
    (LateBuffer, r"LateBuffer' retrieved differently in a fresh process"),
    (HidesInAList, r"HidesInAList': its written state holds 12288 float32 values per episode, which exceeds the "
                   r"budget \(declared 0, measured 12288"),
    (HidesInADataclass, r"HidesInADataclass': its written state holds 12288 float32 values per episode, which "
                        r"exceeds the budget \(declared 1, measured 12288"),

    (ClassPerWrite, r"ClassPerWrite': its memory state's layout differs between writes \(state: "
                    r"tests.test_integrity.Pocket \('zero',\) in the probe write, another class of that name now\)"),
    (TicketsWithTheirTable, r"TicketsWithTheirTable' retrieved differently in a fresh process"),
])
def test_cheating_models_are_refused_in_one_line_and_nothing_is_written(cls, message, tmp_path):
    try:
        with pytest.raises(MembenchError, match=message) as caught:
            _run(f"{__name__}:{cls.__name__}", tmp_path)
    finally:
        for name in [name for name in os.environ if name.startswith(STASH)]:
            del os.environ[name]
    assert "\n" not in str(caught.value)
    assert ResultsStore(tmp_path).records() == []



def test_a_state_reaches_the_read_without_its_tensors_strides(tmp_path):
    """Strides are not storage: a state of tensors of no elements measures 0 floats, so the read gets them laid
    out afresh (`budget.sealed`), and a model keeping the patterns in their strides reads nothing back."""
    strided = torch.empty_strided((2, 0, 1), (5, 7, 11))
    assert measure_state(strided, 2) == 0 and sealed(strided).stride() == torch.empty(2, 0, 1).stride()
    (record,) = _run(f"{__name__}:HoldsInStrides", tmp_path, num_patterns=(16,))
    assert record["memory_floats"] == 0
    assert record["mean_error"] == 64  # every query returned as it came: its 64 erased bits undecided


def test_the_fresh_read_takes_the_first_the_last_and_two_unforeseeable_batches():
    from membench.fresh_read import batches_to_audit

    assert batches_to_audit(1) == {1} and batches_to_audit(2) == {1, 2} and batches_to_audit(4) == {1, 2, 3, 4}
    drawn = [batches_to_audit(16) for _ in range(200)]
    assert all(len(chosen) == 4 and {1, 16} <= chosen for chosen in drawn)
    assert set().union(*drawn) == set(range(1, 17))  # every middle batch can be drawn (200 draws of 2 of 14)


def test_a_model_honest_on_the_first_evaluated_batch_only_is_refused(tmp_path):
    """1100 queries at N = 16 are two evaluated batches (64 and 5 episodes): every one is read again in the fresh
    process, so keeping the second's patterns in a module-level table is caught."""
    specs = get_suite("table1").expand("table1", (f"{__name__}:LateKeyed",), (0,), 1100, "quick", (16,))
    with pytest.raises(MembenchError, match=r"LateKeyed' retrieved differently in a fresh process from the same state, "
                                            r"queries and weights \(evaluated batch 2 of 2\)"):
        run_all(specs, tmp_path, device="cpu", progress=False)
    assert ResultsStore(tmp_path).records() == []


def test_the_fresh_process_must_give_the_retrievals_the_run_scored(tmp_path):
    """ConsumesItsTable's states read the same twice (the queries back) once its scored reads have emptied the
    table: the fresh process is held to the scored retrievals, not to a second read."""
    with pytest.raises(MembenchError, match=r"ConsumesItsTable' retrieved differently in a fresh process from the "
                                            r"same state, queries and weights \(evaluated batch 1 of 1\)"):
        _run(f"{__name__}:ConsumesItsTable", tmp_path, num_patterns=(16,))
    assert ResultsStore(tmp_path).records() == []


def test_the_global_generators_carry_nothing_from_a_write_to_its_read(tmp_path):
    """Every read of a model from outside membench starts from seed 0 (as in the fresh process), so a key left in
    torch's generator by the write is gone: SeedsItsKey retrieves nothing (about half of the 64 erased bits
    wrong, where its table would give none)."""
    (record,) = _run(f"{__name__}:SeedsItsKey", tmp_path, num_patterns=(16,))
    assert record["memory_floats"] == 0 and record["mean_error"] > 20


def test_a_learned_model_is_audited_again_once_trained(tmp_path):
    """KeepsOnSelfOnceTrained writes honestly until its first update; the audit of the trained model, before
    evaluation, finds its write changing it."""
    with pytest.raises(MembenchError, match=r"KeepsOnSelfOnceTrained' changed 'kept' while writing"):
        _run(f"{__name__}:KeepsOnSelfOnceTrained", tmp_path, num_patterns=(16,))
    assert ResultsStore(tmp_path).records() == []


def test_a_tuple_subclass_in_a_state_is_laid_out_as_the_plain_tuple_it_is_copied_to():
    """A torch.Size (a tuple subclass, not a named tuple) is sealed as a plain tuple: its layout says tuple, so the
    copy's measurement agrees with the original's and an honest model keeping a shape is not refused."""
    from membench.budget import sealed, state_layout

    state = {"shape": torch.Size([2, 4]), "slots": torch.zeros(2, 8)}
    assert state_layout(sealed(state), 2) == state_layout(state, 2)


def test_a_sealed_dataclass_holds_every_field_and_runs_none_of_its_code():
    """The copy a read gets has every field (one not in __init__ too), copied, and no __post_init__ ran."""

    @dataclasses.dataclass(frozen=True)
    class State:
        kept: torch.Tensor
        derived: torch.Tensor = dataclasses.field(init=False)
        built: ClassVar[list[int]] = []

        def __post_init__(self):
            State.built.append(1)
            object.__setattr__(self, "derived", 2 * self.kept)

    state = State(torch.ones(2, 3))
    copy = sealed(state)
    assert State.built == [1] and type(copy) is State and vars(copy).keys() == {"kept", "derived"}
    assert torch.equal(copy.derived, state.derived) and copy.derived.data_ptr() != state.derived.data_ptr()
    assert measure_state(copy, 2) == 3 + 3


def test_a_leaf_shared_by_the_episodes_keeps_its_layout_in_a_batch_of_one(tmp_path):
    """Its (1, 128) row is the episode dimension's size in a batch of one episode (--queries <= N): the same
    layout, not a changed one."""
    specs = get_suite("table1").expand("table1", (f"{__name__}:SharedRow",), (0,), 16, "quick", (16,))
    (record,) = run_all(specs, tmp_path, device="cpu", progress=False)
    assert record["num_queries"] == 16 and record["memory_floats"] == 16 * 128 + 128 and record["mean_error"] == 0


def test_a_model_that_changes_the_patterns_it_is_given_is_scored_against_the_real_ones(tmp_path):
    (record,) = _run(f"{__name__}:MutatesPatterns", tmp_path, num_patterns=(16,))
    assert record["memory_floats"] == 0 and record["mean_error"] > 50  # zeros against random bits: about 64


class GrowsAfterTheProbe(StoresEverything):
    """Keeps half of each pattern in writes of at most two episodes (the probe's), whole patterns in the larger
    batches of evaluation."""

    def memory_floats(self, spec):
        return spec.num_patterns * 64

    def write(self, patterns):
        return patterns.clone() if patterns.shape[0] > 2 else patterns[..., :64].clone()

    def read(self, state, queries):
        if state.shape[-1] == 128:
            return StoresEverything.read(self, state, queries)
        return torch.cat([StoresEverything.read(self, state, queries[..., :64]), queries[..., 64:]], -1)


class RelaysOutAfterTheProbe(GrowsAfterTheProbe):
    """The same count in every write, but evaluation's writes lay it out otherwise (two halves, not one)."""

    def write(self, patterns):
        half = patterns[..., :64].clone()
        return (half[..., :32].clone(), half[..., 32:].clone()) if patterns.shape[0] > 2 else half

    def read(self, state, queries):
        return super().read(torch.cat(state, -1) if isinstance(state, tuple) else state, queries)


@pytest.mark.parametrize("cls, message", [
    (GrowsAfterTheProbe, r"GrowsAfterTheProbe': its written state holds 4096 float32 values per episode, which differs "
                         r"from what the model declares \(declared 2048, measured 4096"),
    (RelaysOutAfterTheProbe, r"RelaysOutAfterTheProbe': its memory state's layout differs between writes"),
])
def test_a_model_that_changes_its_state_after_the_probe_is_refused_at_the_evaluation_batch(cls, message, tmp_path):
    """The probe writes two episodes; evaluation writes more at once (3 at N = 32 and 96 queries). Every
    evaluation batch's state is measured against the probe's count and layout, so a model that behaves only
    while probed is refused there, with no record."""
    specs = get_suite("table1").expand("table1", (f"{__name__}:{cls.__name__}",), (0,), 96, "quick", (32,))
    with pytest.raises(MembenchError, match=message) as caught:
        run_all(specs, tmp_path, device="cpu", progress=False)
    assert "\n" not in str(caught.value)
    assert ResultsStore(tmp_path).records() == []


class HonestWithObjects(StoresEverything):
    """Honest, and holds attributes that writing leaves alone but that compare unequal to their copies."""

    def __init__(self, spec):
        super().__init__(spec)
        self.rng, self.generator, self.nan = np.random.default_rng(0), torch.Generator(), float("nan")
        self.nans, self.thing = torch.full((3,), float("nan")), type("Thing", (), {})()
        self.register_buffer("nan_buffer", torch.full((2,), float("nan")))

    def memory_floats(self, spec):
        return spec.num_patterns * 128


def test_a_model_drawing_from_every_global_generator_reads_the_same_in_a_fresh_process(tmp_path):
    """The runner seeds torch's, NumPy's and Python's generators from the run's seed before building a model
    (and the fresh process does the same), so an honest model using any of them is not refused."""
    (record,) = _run(f"{__name__}:RandomFromEverywhere", tmp_path, num_patterns=(16,))
    assert record["mean_error"] == 0


def test_attributes_that_writing_leaves_alone_are_not_changes(tmp_path):
    """Generators, NaNs and plain objects are compared by value (their pickled bytes, tensors bit for bit)."""
    (record,) = _run(f"{__name__}:HonestWithObjects", tmp_path, num_patterns=(16,))
    assert record["mean_error"] == 0


@pytest.mark.parametrize("cls", [HidesOnTensor, CachesByIdentity])
def test_what_the_measurement_does_not_see_never_reaches_the_read(cls, tmp_path):
    """A model that keeps the patterns beside its one measured value per episode (an attribute of the tensor,
    a cache keyed by it) reads a sealed copy of the state, so it retrieves only the queries back."""
    (record,) = _run(f"{__name__}:{cls.__name__}", tmp_path, num_patterns=(32,))
    passthrough = record["mean_error"]
    assert record["memory_floats"] == 1 and passthrough > 20  # half the 64 erased bits wrong: nothing retrieved
    patterns = BinaryTask(32).sample(2, torch.Generator().manual_seed(0)).patterns
    assert measure_state(cls(BinaryTask(32).spec).write(patterns), 2) == 1


class Honest(StoresEverything):
    """StoresEverything's state, declared exactly."""

    def memory_floats(self, spec):
        return spec.num_patterns * 128


def test_honest_models_differ_only_in_what_they_declare(tmp_path):
    """The same state, declared exactly: it runs, and its record holds the measured count."""
    (record,) = _run(f"{__name__}:Honest", tmp_path, num_patterns=(32,))
    assert record["memory_floats"] == 32 * 128 and record["mean_error"] == 0


def test_outside_softmax_memory_runs_within_the_budget(tmp_path):
    records = _run(f"{__name__}:TruncatedSoftmax", tmp_path, num_patterns=(16, 96))
    assert [r["memory_floats"] for r in sorted(records, key=lambda r: r["task"]["num_patterns"])] == [2048, 8256]


@pytest.mark.parametrize("value", [-5, float("nan"), 8256.9, "8256", True, None])
def test_memory_floats_must_be_a_non_negative_integer(value):
    spec = BinaryTask(16).spec
    with pytest.raises(MembenchError, match="must return a non-negative integer"):
        check_declared(_bad_count(value)(spec), spec, TABLE1_BUDGET, "bad")


def test_measure_counts_storage_bytes_not_shapes():
    batch = 4
    floats = torch.zeros(batch, 10)
    assert measure_state(floats, batch) == 10
    assert measure_state(torch.zeros(batch, 10, dtype=torch.bool), batch) == math.ceil(10 / 4)  # bits packed as bytes
    assert measure_state(torch.zeros(batch, 10, dtype=torch.float64), batch) == 20
    assert measure_state(torch.zeros(batch, 100)[:, :10], batch) == 100      # a view keeps its whole storage
    assert measure_state((floats, {"b": floats[:, :5]}), batch) == 10        # one storage counts once
    assert measure_state(torch.zeros(7), batch) == 7                         # no episode dimension: whole
    assert measure_state(np.zeros((batch, 3), dtype=np.float32), batch) == 3
    assert measure_state(None, batch) == 0
    with pytest.raises(MembenchError, match="cannot measure"):
        measure_state(object(), batch)
    whole = torch.zeros(1000)
    assert measure_state((whole, whole[:batch]), batch) == measure_state((whole[:batch], whole), batch) == 1000
    array = np.zeros((batch, 250), dtype=np.float32)                       # one buffer seen as an array and a tensor
    assert measure_state((array, torch.from_numpy(array)), batch) == 250
    assert measure_state((torch.from_numpy(array[:, :10]), array), batch) == 250  # overlapping storages: their union


class _Subtensor(torch.Tensor):
    pass


class _Subarray(np.ndarray):
    pass


@pytest.mark.parametrize("state, what", [
    (torch.zeros(2, 4, device="meta"), "a tensor on the meta device"),
    (torch.zeros(2, 4).to_sparse(), "a tensor with layout torch.sparse_coo"),
    (torch.zeros(2, 4).as_subclass(_Subtensor), "a _Subtensor (a tensor subclass)"),
    ({"a": [torch.zeros(2, 4).as_subclass(_Subtensor)]}, "a _Subtensor (a tensor subclass)"),
    (np.zeros((2, 4), dtype=np.float32).view(_Subarray), "a _Subarray (an array subclass)"),
    ({0: torch.zeros(2, 4)}, "a key that is not a string"),
    ({"k" * 101: torch.zeros(2, 4)}, "a key that is not a string of at most 100 characters"),
    ((1.0, 2 ** 24 + 1), "an integer beyond float32's exact range"),
    (np.zeros(2, dtype=np.dtype("f4", metadata={"patterns": b"\x01" * 4096})), "with metadata"),  # 1 float counted
    (np.zeros(2, dtype=[("1011" * 512, "u1", (4,))]), "a structured dtype"),  # a field name holding the patterns
    (np.zeros((2, 4), dtype="U8"), "not numbers"),
    (torch.nested.nested_tensor([torch.zeros(3), torch.zeros(5)]), "a nested tensor"),
    (torch.zeros(2, 4, dtype=torch.uint8).view(torch.uint4), "a tensor of dtype torch.uint4"),  # clone() fails
])
def test_what_cannot_be_measured_is_refused_naming_where_it_is(state, what):
    """The measurement walks every container; a leaf or key it cannot count is refused with its path, never
    counted as nothing."""
    with pytest.raises(MembenchError, match=f"its memory state holds state.*{re.escape(what)}.*cannot measure"):
        measure_state(state, 2)


# --- every registered model keeps its word -------------------------------------------

def _episodes(task, batch, seed):
    return task.sample(batch, torch.Generator().manual_seed(seed), split="test")


def _check_model(spec: RunSpec) -> None:
    """Measured = declared <= budget; write leaves the model unchanged; episodes are independent."""
    task = make_task(spec.task)
    torch.manual_seed(0)
    model = build_model(spec, task)
    declared = check_declared(model, task.spec, spec.budget, spec.model)
    a, b = _episodes(task, 2, 1), _episodes(task, 2, 2)
    assert audit_write(model, a.patterns, a.queries, b.patterns, declared, spec.budget, spec.model).floats == declared
    # batches [e, x] and [e, y] share episode e: its retrievals must not depend on its neighbour
    first = torch.stack([a.patterns[0], a.patterns[1]]), torch.stack([a.queries[0], a.queries[1]])
    second = torch.stack([a.patterns[0], b.patterns[0]]), torch.stack([a.queries[0], b.queries[0]])
    model.eval()
    retrievals = []
    with torch.no_grad():
        for patterns, queries in (first, second):
            torch.manual_seed(5)
            retrievals.append(model.read(model.write(patterns), queries)[0])
    torch.testing.assert_close(retrievals[0], retrievals[1], rtol=1e-5, atol=1e-5,
                               msg=f"{spec.model}: an episode's retrievals depend on another episode")


TABLE1_CASES = [(model, n) for model in BUILTIN_MODELS if model != "passthrough" for n in TABLE1_NUM_PATTERNS]


@pytest.mark.parametrize("model, num_patterns", TABLE1_CASES)
def test_every_registered_model_at_every_table1_n(model, num_patterns):
    spec = get_suite("table1").expand("table1", (model,), (0,), 64, "quick", (num_patterns,))[0]
    _check_model(spec)


def test_passthrough_holds_nothing():
    """It declares 0 floats, its written state measures 0, and it reads every query back unchanged."""
    spec = get_suite("table1").expand("table1", ("passthrough",), (0,), 64, "quick", (16,))[0]
    _check_model(spec)
    task = make_task(spec.task)
    model = build_model(spec, task)
    episodes = _episodes(task, 2, 1)
    assert check_declared(model, task.spec, spec.budget, spec.model) == 0
    assert measure_state(model.write(episodes.patterns), 2) == 0
    assert torch.equal(model.read(model.write(episodes.patterns), episodes.queries), episodes.queries)


def test_every_learned_preset_at_table1_budget():
    """Every preset of every learned model: measured = declared within the budget at the largest N."""
    task = BinaryTask(96)
    for name, path in BUILTIN_MODELS.items():
        cls = resolve_model(name)
        if not cls.trainable:
            continue
        for preset in cls.presets(task.spec, {}):
            spec = RunSpec("table1-learned", name, task.config(), TABLE1_BUDGET, 0, 96, preset)
            model = build_model(spec, task)
            episodes = _episodes(task, 1, 0)
            with torch.no_grad():
                state = model.write(episodes.patterns)
            assert measure_state(state, 1) == model.memory_floats(task.spec) <= TABLE1_BUDGET, (name, preset)


@pytest.fixture
def image_data(tmp_path, monkeypatch):
    from membench import datasets

    root = tmp_path / "data"  # at least 64 images in each split, so the sweeps' own N = 64 is used
    write_omniglot_zip(root / "omniglot" / "images_background.zip", {"Greek": 20}, drawers=4)
    write_omniglot_zip(root / "omniglot" / "images_evaluation.zip", {"Thai": 20}, drawers=4, seed=1)
    write_cifar(root / "cifar-10-batches-py", per_batch=13, test=64)
    monkeypatch.setattr(datasets, "_data_dir_override", root)


@pytest.mark.slow
def test_every_figure3_point_measures_what_it_declares(image_data):
    """All points of both rate sweeps (quick and gpu presets, N = 64), on fixture data in the published formats."""
    for suite_name, preset in [(s, p) for s in ("fig3-omniglot", "fig3-cifar") for p in ("quick", "gpu")]:
        for spec in SUITES[suite_name].expand(suite_name, None, (0,), 64, preset):
            task = make_task(spec.task)
            model = build_model(spec, task)
            declared = check_declared(model, task.spec, spec.budget, spec.model)
            episodes = _episodes(task, 1, 0)
            with torch.no_grad():
                measured = measure_state(model.write(episodes.patterns), 1)
            assert measured == declared == spec.budget, (spec.model, spec.preset, spec.options, measured, spec.budget)


def test_over_budget_raw_slots_and_memory_networks_are_clear(tmp_path):
    with pytest.raises(OverBudgetError, match="raw_slots: no whole pattern of 128 values fits .num_slots=0."):
        _run("raw_slots", tmp_path, num_patterns=(16,), budget=100)
    specs = get_suite("table1-learned").expand("table1-learned", ("memory_networks",), (0,), 9000, "quick", (9000,))
    with pytest.raises(OverBudgetError, match="leaves no value per slot for N=9000"):
        run_all(specs, tmp_path, device="cpu", progress=False)
