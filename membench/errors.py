"""Errors that the CLI turns into a clear message and a non-zero exit."""

EXIT_PAUSED = 3  # exit status of a command whose meta-training stopped at its time limit: rerun to continue
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it; SIGTERM ends a command the same way


class MembenchError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class OverBudgetError(MembenchError):
    """A model's memory state holds more float32 values than the run's budget."""


class UnknownOption(MembenchError):
    """An --option the model does not take (a field its configs lack, or an argument its constructor lacks)."""


class TrainingDiverged(MembenchError):
    """Meta-training produced a non-finite loss or gradient, or collapsed back to chance (membench.training)."""


class TrainingPaused(MembenchError):
    """Meta-training stopped at its wall-time limit; rerunning the command resumes it."""


class DatasetMissing(MembenchError):
    """A data set was not found where the loader looked."""


class DataMismatch(MembenchError):
    """The data directory holds other images than those a stored run was defined on (`what`: which, and where)."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what


class Interrupted(MembenchError):
    """Ctrl-C or SIGTERM, after the work in flight was saved or cleaned up (exit status 130, this message)."""


class TrainingInterrupted(Interrupted):
    """Ctrl-C or SIGTERM during meta-training; the checkpoint was written first, so rerunning resumes."""


class CheckpointBusy(Exception):
    """Another process is training this checkpoint (raised only when asked not to wait for it)."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is memory that could not be allocated (Python's, torch's CPU allocator or CUDA's)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
        phrase in str(exc) for phrase in ("allocate", "out of memory", "size calculation overflowed")))
