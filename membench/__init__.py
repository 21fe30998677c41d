"""membench: a benchmark suite for associative memories under equal float32 budgets."""
from membench.errors import MembenchError, OverBudgetError, TrainingDiverged
from membench.interface import AssociativeMemory, TaskSpec

__version__ = "0.1.0"
__all__ = ["AssociativeMemory", "TaskSpec", "MembenchError", "OverBudgetError", "TrainingDiverged", "__version__"]
