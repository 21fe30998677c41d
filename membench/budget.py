"""Float32 memory budgets and the check the runner applies before every run."""
from __future__ import annotations

from membench.errors import OverBudgetError
from membench.interface import AssociativeMemory, TaskSpec


def hopfield_floats(dim: int) -> int:
    """Free values of a Hopfield network on `dim` units: symmetric zero-diagonal weights + thresholds."""
    return dim * (dim - 1) // 2 + dim


TABLE1_BUDGET = hopfield_floats(128)  # 8256, the paper's budget for 128-bit patterns


def check_budget(model: AssociativeMemory, spec: TaskSpec, budget: int, model_name: str) -> int:
    """Return the model's float32 count for `spec`; raise OverBudgetError if it exceeds `budget`."""
    count = int(model.memory_floats(spec))
    if count > budget:
        raise OverBudgetError(
            f"model '{model_name}' stores {count} float32 values for N={spec.num_patterns} patterns "
            f"of shape {spec.pattern_shape}, over the budget of {budget}. Shrink the model's memory "
            "(e.g. fewer slots or a smaller writable layer) or run with a larger --budget."
        )
    return count
