"""One meta-training update, shared by `meta_train` and `membench throughput`.

    loss, retrievals = model.meta_loss(patterns, queries)
    loss.backward(); clip the global gradient norm; AdamW step

`Stepper.step` returns device tensors and never waits for the device: whether the loss
and gradient norm were finite is a device flag, read by the caller only when it logs or
checkpoints. With `TrainConfig.cuda_graph` on a CUDA device the whole update (forward,
second-order backward, clipping, AdamW) is captured once per batch shape (one graph per
N) and replayed, which removes the per-kernel launch cost; the capture's warm-up updates
are undone, so training matches eager training step for step. The graphs share one memory
pool (a process holds one update's peak, not one per N), so a step's outputs hold until the
next step only: use them (or queue work on them) before calling `step` again. $MEMBENCH_CUDA_GRAPHS=0
turns graphs off for a process (how updates run is not part of checkpoint keys or records' presets;
each stretch of training's history says whether it replayed graphs). With `TrainConfig.compile`
(or $MEMBENCH_COMPILE=1 for a process whatever the preset says; =0: eager; not part of keys either)
the meta-loss (forward and its backward) is compiled by `torch.compile` with dynamic shapes: once
for every N where no Python loop runs over the N patterns (EBMM), once per N where one does (the loop's
length is a guard: the DNC, MANN, plasticity, the LSTM). On the CPU inductor fuses the elementwise work
into C++ loops (it needs a C++ compiler). Where capture fails (for any batch shape: graphs are then off
for all) or compiling fails (on the first update), a warning is printed and training continues eagerly;
an error of the eager meta-loss, or of compiled code that has run, is raised as itself.
`TrainConfig.precision` sets the arithmetic of the meta-loss and its backward only (tf32: TF32 matmuls and
convolutions on CUDA; bf16: autocast of the meta-loss, whose backward follows the dtypes of its forward);
clipping and AdamW, and everything outside the update (evaluation), stay float32 at the highest precision.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from membench.errors import MembenchError
from membench.interface import AssociativeMemory, TrainConfig
from membench.store import warn

GRAPH_WARMUP = 3  # eager updates on a side stream before a capture (required by CUDA graphs)
GRAPHS_ENV = "MEMBENCH_CUDA_GRAPHS"  # "0": no graphs whatever the preset says (make gpu-graph-check failed)
GRAPHS_OFF_ENV = "MEMBENCH_CUDA_GRAPHS_OFF"  # model names, space-separated: no graphs for these (their check differed)
COMPILE_ENV = "MEMBENCH_COMPILE"  # "1": compile the meta-loss, "0": eager, whatever the preset says; unset: the preset


@dataclass
class StepOutput:
    loss: torch.Tensor        # () on the device
    retrievals: torch.Tensor  # (B, N, *S), detached
    finite: torch.Tensor      # () bool: loss and gradient norm were finite


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    patterns: torch.Tensor
    queries: torch.Tensor
    output: StepOutput


def _checked(out: Any, patterns: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`meta_loss`'s (loss, retrievals); MembenchError naming what it returned instead."""
    def described(value: Any) -> str:
        return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(v, torch.Tensor) for v in out)
            and out[0].ndim == 0 and out[1].shape == patterns.shape):
        got = f"({', '.join(map(described, out))})" if isinstance(out, tuple) else described(out)
        raise MembenchError(f"{name}.meta_loss returned {got}; it must return (the batch's loss as a scalar tensor, "
                            f"its retrievals shaped like the patterns, {tuple(patterns.shape)})")
    if not out[0].requires_grad:
        raise MembenchError(f"{name}.meta_loss returned a loss that no parameter of the model reaches; it must be "
                            "computed from the model's parameters (through write and read) to be trained")
    return out


def _compile(config: TrainConfig) -> bool:
    """Whether updates compile the meta-loss: $MEMBENCH_COMPILE where set ("1" or "0"), else `config.compile`."""
    value = os.environ.get(COMPILE_ENV, "")
    if value not in ("", "0", "1"):
        raise MembenchError(f"{COMPILE_ENV}={value!r}: use 1 (compile the meta-loss), 0 (eager updates), or unset it "
                            f"(as the preset says)")
    return config.compile if value == "" else value == "1"


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA inside the block; the flags as they were afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def cpu_has_bf16_matmul() -> bool:
    """Whether oneDNN runs bfloat16 matrix products natively on this CPU (AMX or AVX-512 BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


class Stepper:
    """AdamW updates of `model` under `config`, eager or replayed from CUDA graphs."""

    def __init__(self, model: AssociativeMemory, config: TrainConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        if config.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_matmul():
            warn("precision bf16 on a CPU without bfloat16 matrix instructions (no AMX or AVX-512 BF16) emulates "
                 "them: EBMM's quick update ran 12x slower than float32 on such a CPU "
                 "(results/bench/throughput_equal_work.txt); use --option train.precision=float32 here")
        self.graphs_on = (bool(config.cuda_graph) and device.type == "cuda" and os.environ.get(GRAPHS_ENV) != "0"
                          and getattr(model, "name", None) not in os.environ.get(GRAPHS_OFF_ENV, "").split())
        lr = torch.tensor(config.lr, device=device) if self.graphs_on else config.lr
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay,
                                           capturable=self.graphs_on)
        if self.graphs_on:  # its eager warm-up updates (and a fallback's) are meant: torch's advice to drop
            #   capturable otherwise fills every GPU log
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        self._graphs: dict[tuple, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs_on else None  # shared by every N's graph
        self._compiled, self._compiled_ran = None, False
        if _compile(config):
            if device.type == "cpu":  # a pool of compile workers would compete with training for the cores
                from torch._inductor import config as inductor_config
                inductor_config.compile_threads = 1
            # inductor's own lowering calls a deprecated torch helper: one FutureWarning per graph, nothing to act on
            warnings.filterwarnings("ignore", message=r"`torch\._prims_common\.check` is deprecated",
                                    category=FutureWarning)
            self._compiled = torch.compile(model.meta_loss, dynamic=True)

    def after_load(self) -> None:
        """Call after loading an optimizer state, before the first update: keeps the learning rate a device
        tensor for graphs (a graph captured earlier would go on reading the tensor it captured)."""
        assert not self._graphs, "after_load must come before the first update"
        if self.graphs_on:
            device = next(self.model.parameters()).device
            for group in self.optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=device)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    @property
    def compiled(self) -> bool:
        """Whether updates run the compiled meta-loss (False once compiling has failed)."""
        return self._compiled is not None

    @property
    def matmul_precision(self) -> str:
        """The float32 matmul precision of the updates in torch's terms: "high" (TF32) under precision tf32,
        else the process's setting (under bf16 the autocast meta-loss's matmuls are bfloat16 whatever it says)."""
        return "high" if self.config.precision == "tf32" else torch.get_float32_matmul_precision()

    def _arithmetic(self, forward: bool) -> contextlib.AbstractContextManager:
        """The meta-loss's (`forward`) or its backward's arithmetic (`TrainConfig.precision`), restored afterwards.
        bf16 autocasts the forward only: the backward runs each operation in the dtype its forward used."""
        if self.config.precision == "bf16" and forward:  # no cache of cast weights in a graph (not replayed)
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.graphs_on)
        return _tf32() if self.config.precision == "tf32" else contextlib.nullcontext()

    def _update(self, patterns: torch.Tensor, queries: torch.Tensor) -> StepOutput:
        """One update run directly (the compiled meta-loss where compiling is on), not from a graph."""
        if self.config.precision == "tf32" and self.device.type != "cuda":  # here: evaluating makes no update
            raise MembenchError(f"precision 'tf32' is CUDA's (TF32 tensor cores); on {self.device.type} use float32 "
                                f"or bf16 (--option train.precision=...)")
        compiled = self._compiled
        loss_fn = compiled or self.model.meta_loss
        if compiled is not None and not self._compiled_ran:  # else minutes pass silently where no bar is drawn
            print(f"compiling {type(self.model).__name__}'s meta-loss (torch.compile): the first update takes a "
                  f"while (minutes on a CPU)", file=sys.stderr, flush=True)
        try:
            with self._arithmetic(forward=True):
                loss, retrievals = _checked(loss_fn(patterns, queries), patterns, type(self.model).__name__)
            self.optimizer.zero_grad(set_to_none=True)
            with self._arithmetic(forward=False):
                loss.backward()
        except MembenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - compiling failed (no C++ compiler, an op inductor cannot lower)
            if compiled is None or self._compiled_ran:  # eager, or compiled code that ran before: a real error
                raise
            warn(f"torch.compile failed ({(str(exc).splitlines() or [type(exc).__name__])[0][:200]}); training eagerly")
            self._compiled = None
            return self._update(patterns, queries)
        self._compiled_ran = True
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        self.optimizer.step()
        return StepOutput(loss.detach().float(), retrievals.detach().float(), finite)

    def step(self, patterns: torch.Tensor, queries: torch.Tensor) -> StepOutput:
        """One update on a batch (patterns, queries (B, N, *S) on the model's device)."""
        if not self.graphs_on:
            return self._update(patterns, queries)
        key = (tuple(patterns.shape), tuple(queries.shape))
        if key not in self._graphs:
            stream = torch.cuda.current_stream()
            try:
                self._graphs[key] = self._capture(patterns, queries)
            except RuntimeError as exc:  # an op capture does not support, or out of memory: keep training, eagerly
                cause = exc.__context__ or exc  # a failed capture's end raises over the op's own error
                warn(f"CUDA graph capture failed ({(str(cause).splitlines() or [type(cause).__name__])[0][:200]}); "
                     f"training eagerly")
                torch.cuda.set_stream(stream)  # the capture's stream stays current when its end fails
                torch.cuda.synchronize()
                self.graphs_on = False
                self._graphs.clear()  # their memory back for the eager updates
                torch.cuda.empty_cache()
                return self._update(patterns, queries)
        captured = self._graphs[key]
        captured.patterns.copy_(patterns)
        captured.queries.copy_(queries)
        captured.graph.replay()
        return captured.output

    def _state_tensors(self) -> list[tuple[torch.Tensor, dict | None]]:
        return [(p, self.optimizer.state.get(p)) for p in self.model.parameters()]

    def _capture(self, patterns: torch.Tensor, queries: torch.Tensor) -> _Captured:
        """Warm up, capture one update, then restore parameters and optimiser state as they were."""
        saved = [(p.detach().clone(), {k: v.clone() for k, v in state.items()} if state else None)
                 for p, state in self._state_tensors()]
        static_patterns, static_queries = patterns.clone(), queries.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    self._update(static_patterns, static_queries)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):  # batch drawn meanwhile
                output = self._update(static_patterns, static_queries)
        finally:
            with torch.no_grad():
                for (param, state), (param_before, state_before) in zip(self._state_tensors(), saved):
                    param.copy_(param_before)
                    for name, value in (state or {}).items():
                        if not isinstance(value, torch.Tensor):
                            continue
                        if state_before:
                            value.copy_(state_before[name])
                        else:  # the state the warm-up created: back to AdamW's fresh state
                            value.zero_()
        return _Captured(graph, static_patterns, static_queries, output)
