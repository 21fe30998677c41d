"""membench: a benchmark suite for associative memories under equal float32 budgets."""
from membench.errors import MembenchError, OverBudgetError, TrainingDiverged
from membench.interface import AssociativeMemory, Preset, TaskSpec, TrainConfig

__version__ = "0.1.0"
__all__ = ["AssociativeMemory", "TaskSpec", "Preset", "TrainConfig", "MembenchError", "OverBudgetError", "TrainingDiverged", "__version__"]
