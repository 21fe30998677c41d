"""The training batches of meta-training, step by step (`EpisodeStream`), drawn ahead on a worker thread where
the device runs asynchronously."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from membench.interface import TrainConfig
from membench.tasks import Episodes, Task


class EpisodeStream:
    """The training batches, step by step, all drawn from `generator`: the step's N (mixed-N presets, over a
    curriculum), then `config.batch_size` episodes of the train split.

    With `ahead` (on CUDA), the next step's batch is drawn on a worker thread while the device runs this
    one, into pinned memory (so that its copy to the device need not wait for the update before it): the
    CPU's sampling would otherwise hold up every update. The batches are the same either way, and
    `generator_state` is the state before the first batch not yet taken, so a checkpoint resumes exactly.
    """

    def __init__(self, task: Task, config: TrainConfig, generator: torch.Generator, ahead: bool):
        self.task, self.config, self.generator = task, config, generator
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="episodes") if ahead else None
        self._pin = ahead and torch.cuda.is_available()
        self._next: Future | None = None
        self._state = generator.get_state()  # before the first batch not yet taken

    def _draw(self, step: int) -> tuple[Task, Episodes]:
        step_task = self.task
        if self.config.num_patterns:
            choices = self.config.num_patterns
            if step < self.config.curriculum_steps:
                choices = sorted(choices)[:1 + len(choices) * step // self.config.curriculum_steps]
            choice = torch.randint(len(choices), (1,), generator=self.generator).item()
            step_task = self.task.with_num_patterns(choices[choice])
        episodes = step_task.sample(self.config.batch_size, self.generator, split="train")
        return step_task, episodes.pinned() if self._pin else episodes

    def take(self, step: int) -> tuple[Task, Episodes]:
        """The task (its N) and the CPU batch of update `step` (0-based); call with consecutive steps."""
        if self._pool is None:
            drawn = self._draw(step)
        else:
            drawn = (self._next or self._pool.submit(self._draw, step)).result()
            self._next = None
        if self._pool is not None:  # the state before the batch about to be drawn ahead
            self._state = self.generator.get_state()
            if step + 1 < self.config.steps:
                self._next = self._pool.submit(self._draw, step + 1)
        return drawn

    def generator_state(self) -> torch.Tensor:
        return self.generator.get_state() if self._pool is None else self._state

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
