"""Named suites: each expands to a list of runs (model x number of patterns x seed)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from membench.budget import TABLE1_BUDGET
from membench.errors import MembenchError

TABLE1_NUM_PATTERNS = (16, 32, 48, 64, 96)
CLASSICAL_MODELS = ("hopfield_hebb", "hopfield_storkey", "hopfield_pseudoinverse", "raw_slots")
LEARNED_MODELS = ("ebmm", "memory_networks", "mann", "lstm", "differentiable_plasticity")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run's numbers (device aside)."""

    suite: str
    model: str                      # registry name or 'module:Class'
    task: dict[str, Any]            # task config, e.g. {"kind": "binary", "num_patterns": 16, ...}
    budget: int                     # float32 budget the model must fit
    seed: int
    queries: int                    # at least this many queries are evaluated
    preset: str = "quick"           # training preset of learned models
    options: dict[str, Any] = field(default_factory=dict)  # extra model constructor options

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


SUITES: dict[str, Suite] = {
    "table1": Suite("Table 1, classical memories (no training): Hopfield rules and raw slots",
                    models=CLASSICAL_MODELS),
    "table1-learned": Suite("Table 1, meta-learned memories (trained with --preset, checkpoints cached)",
                            models=LEARNED_MODELS),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise MembenchError(f"unknown suite '{name}'. Valid suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]
