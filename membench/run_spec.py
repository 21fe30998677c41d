"""What one run is: its `RunSpec` (suite, model, task, budget, seed, queries, preset, options) and run id, and
the presets of the built-in learned models."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_PRESET = "quick"
BUILTIN_PRESETS = ("quick", "gpu", "paper")  # the presets of every built-in learned model


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run's numbers (device aside)."""

    suite: str
    model: str                      # registry name or 'module:Class'
    task: dict[str, Any]            # task config, e.g. {"kind": "binary", "num_patterns": 16, ...}
    budget: int                     # float32 budget the model must fit
    seed: int
    queries: int                    # at least this many queries are evaluated
    preset: str = DEFAULT_PRESET    # training preset of learned models (others run under the default)
    options: dict[str, Any] = field(default_factory=dict)  # constructor options; a learned model's config, train.*

    @property
    def run_id(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        safe_model = self.model.replace(":", "-").replace(".", "-")
        return f"{self.suite}-{safe_model}-N{self.task['num_patterns']}-s{self.seed}-{digest}"
