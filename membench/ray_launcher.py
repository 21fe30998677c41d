"""`membench run --launcher ray`: the same runs as the local runner, as Ray tasks on a cluster.

Each run executes `membench.runner.execute` in a Ray worker, so records, run ids, the
skip-finished rule, checkpoints and locks are exactly the local runner's; workers write into
the shared output directory and checkpoint cache (both must be on a filesystem every node
sees). Scheduling:
- runs whose record exists and is current (`run_identity.is_current`) are skipped (all of them rerun with --force);
- a learned model's runs that share a checkpoint form a chain: the first trains (and
  evaluates), the others start once it has finished and reuse the checkpoint, so each
  checkpoint is trained once; runs of different checkpoints and untrained runs go in parallel;
- a task asks for one GPU when its device is CUDA, else one CPU; with `auto`, a learned model's runs are
  CUDA's when the cluster has a GPU, the others' (quick, and numbered the same anywhere) a CPU's;
- a failed run is reported with its message and the others go on, but for the later runs of its chain, which
  are not started; the call then raises MembenchError naming the failures (rerunning finishes what is missing);
- `train_time_limit_s` bounds the call, as locally: every task trains until that many seconds after the call
  began (waiting included), so a chain's later runs get what its first left (the driver's clock against each
  node's: a cluster's clocks must agree, as NTP keeps them);
- a Ctrl-C (or SIGTERM) on the driver stops the tasks as it stops a local run: those in training finish their
  update and checkpoint (Ray's cancel sends them SIGINT), the rest are cancelled; a second one stops at once.
Without an address, Ray's own rule: $RAY_ADDRESS's cluster, else one started on this machine with `ray start`,
else a new local Ray (so one machine works too); Ray is imported only here.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from membench.errors import MembenchError, TrainingInterrupted, TrainingPaused
from membench.run_spec import RunSpec


def _execute(spec: RunSpec, out_dir: str, device: str, checkpoint_dir: str, command: str, force: bool,
             deadline: float | None, train: bool, env: dict[str, str], after: Any = None) -> dict[str, Any] | None:
    """One run in a worker, under the driver's MEMBENCH_ variables `env` (`_membench_env`), training until the
    time.time() `deadline` at most; `after`: the result of the run this one waits for: when that one paused,
    this one is not started. None: finished elsewhere meanwhile; a pause at the training time limit comes back
    as {"paused": message}."""
    from membench.provenance import git_state
    from membench.run_identity import is_current
    from membench.build import resolve_device
    from membench import fresh_read
    from membench.runner import execute
    from membench.store import ResultsStore

    if isinstance(after, dict) and "paused" in after:  # the chain's checkpoint paused: its training time is spent
        return after
    os.environ.update(env)  # the data folder and the code's provenance as the driver found them
    fresh_read.ENVIRONMENT.update(env)  # (imported with the runner, before they arrived)
    git_state.cache_clear()
    store = ResultsStore(out_dir)
    with store.claim(spec.run_id, blocking=True):
        if not force and is_current(spec, store, train, Path(checkpoint_dir)):
            return None
        try:
            limit = None if deadline is None else max(0.0, deadline - time.time())
            return execute(spec, store, resolve_device(device), Path(checkpoint_dir), command, False, limit,
                           train=train)
        except TrainingPaused as exc:
            return {"paused": str(exc)}


def _chains(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped so that the runs of one checkpoint form one chain (untrained runs: one each)."""
    from membench.registry import make_task, resolve_model
    from membench.run_identity import checkpoint_key
    from membench.build import build_model

    chains: dict[str, list[RunSpec]] = {}
    for spec in specs:
        key = spec.run_id
        if resolve_model(spec.model).trainable:
            task = make_task(spec.task)
            key = checkpoint_key(spec, build_model(spec, task), task)
        chains.setdefault(key, []).append(spec)
    return list(chains.values())


ADDRESS_FIX = "give the head node's HOST:PORT (ray start --head prints it; port 6379 by default) or auto"
PROBE_TIMEOUT_S = 5.0  # how long _check_address waits for an answer at HOST:PORT
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def _speaks_grpc(host: str, port: int) -> bool:
    """Whether HOST:PORT answers an HTTP/2 client preface with a SETTINGS frame, as every gRPC server (Ray's head,
    its GCS) does; OSError where nothing accepts the connection. With $RAY_USE_TLS (Ray's TLS between its
    processes), accepting the connection is all that is asked."""
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):  # a TLS head answers only a TLS greeting
            return True
        connection.sendall(HTTP2_PREFACE)
        head = b""
        try:
            while len(head) < 9 and (chunk := connection.recv(9 - len(head))):
                head += chunk
        except OSError:  # a timeout, a reset: no HTTP/2 answer
            return False
    return len(head) == 9 and head[3] == 4 and head[5:] == bytes(4)  # frame type SETTINGS, on stream 0


def _check_address(address: str | None) -> None:
    """MembenchError unless `address` (else $RAY_ADDRESS, which Ray joins then) is None, auto, local, a ray://
    address or a HOST:PORT (an IPv6 host in brackets) where a gRPC server answers, as a Ray head's does (Ray
    itself waits minutes where no head is, and was still waiting after two minutes where a web server was)."""
    given = "--address"
    if address is None:
        given, address = "$RAY_ADDRESS", os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MembenchError(f"{given} {address!r} is not HOST:PORT; {ADDRESS_FIX}")
    try:
        grpc = _speaks_grpc(host, int(port))
    except OSError as exc:
        raise MembenchError(f"{given} {address}: nothing answers there ({exc}); {ADDRESS_FIX}") from None
    if not grpc:
        raise MembenchError(f"{given} {address}: something answers there, but not as a Ray head does (gRPC): "
                            f"another service, or the dashboard's port?; {ADDRESS_FIX}")


def run_with_ray(specs: list[RunSpec], out_dir: Path, device: str, force: bool, checkpoint_dir: Path,
                 command: str, progress: bool, train_time_limit_s: float | None,
                 address: str | None, train: bool = True,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Execute the unfinished specs as Ray tasks; return the new records (see the module docstring)."""
    try:
        import ray
    except ImportError:
        raise MembenchError("--launcher ray needs Ray: pip install -e '.[ray]' in the checkout (or pip install "
                            "ray)") from None
    from membench.registry import resolve_model
    from membench.run_identity import pending
    from membench.build import check_device_name
    from membench.store import ResultsStore

    check_device_name(device)
    deadline = None if train_time_limit_s is None else time.time() + train_time_limit_s
    out_dir, checkpoint_dir = Path(out_dir).resolve(), Path(checkpoint_dir).resolve()
    store = ResultsStore(out_dir)
    todo = pending(specs, store, force, train, checkpoint_dir)
    if not todo:
        return []
    if not train:  # on the driver: every run to be made has its checkpoint, or none is started
        from membench.no_train import require_checkpoints

        require_checkpoints(todo, checkpoint_dir)
    env = _membench_env()
    if not ray.is_initialized():
        _check_address(address)
        path = os.pathsep.join([os.getcwd(), *sys.path])  # user models given as module:Class import in workers
        handler = signal.getsignal(signal.SIGTERM)  # ray.init replaces it (sys.exit): membench's is put back
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        except (ValueError, ConnectionError, RuntimeError) as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if address is None and os.environ.get("RAY_ADDRESS"):
                raise MembenchError(f"$RAY_ADDRESS {os.environ['RAY_ADDRESS']}: Ray could not join that cluster "
                                    f"({reason}); {ADDRESS_FIX}, or unset it") from None
            if address is None:
                raise MembenchError(f"Ray could not start on this machine ({reason}); see `ray start --head`'s "
                                    "own message, or run without --launcher ray") from None
            raise MembenchError(f"--address {address}: Ray could not join that cluster ({reason}); {ADDRESS_FIX}") \
                from None
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)  # SIGTERM stops the driver as Ctrl-C does
    remote = ray.remote(max_retries=0)(_execute)
    tasks: dict[Any, tuple[RunSpec, int, int]] = {}  # task -> (its run, its chain, its place in the chain)
    for number, chain in enumerate(_chains(todo)):
        chain_device = _cluster_device(ray, device, resolve_model(chain[0].model).trainable)
        on_gpu = chain_device == "cuda"
        previous = None
        for place, spec in enumerate(chain):
            previous = remote.options(num_cpus=0 if on_gpu else 1, num_gpus=1 if on_gpu else 0).remote(
                spec, str(out_dir), chain_device, str(checkpoint_dir), command, force, deadline, train, env,
                previous)
            tasks[previous] = (spec, number, place)
    return _collect(ray, tasks, progress, on_record)


def _cluster_device(ray: Any, device: str, trainable: bool) -> str:
    """A run's device on the cluster: 'auto' is cuda for a learned model when the cluster has a GPU (the
    driver's node may have none), else cpu; cuda on a cluster without one is refused here rather than in
    every worker."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if device == "cuda" and not has_gpu:
        raise MembenchError("--device cuda: the Ray cluster has no GPU (ray.cluster_resources()); use --device cpu "
                            "or auto, or add GPU nodes")
    return ("cuda" if has_gpu and trainable else "cpu") if device == "auto" else device


def _membench_env() -> dict[str, str]:
    """The workers' MEMBENCH_ variables: this process's, plus the data folder it resolved (--data-dir sets
    it here only) and the code's commit and dirty flag as this process found them before any run (a worker
    would look at the tree when its run ends, or on a node without .git not at all)."""
    from membench.datasets import data_dir
    from membench.provenance import git_state

    env = {k: v for k, v in os.environ.items() if k.startswith("MEMBENCH_")}
    env["MEMBENCH_DATA"] = str(Path(data_dir()).resolve())
    commit, dirty = git_state()
    if commit is not None and "MEMBENCH_GIT_COMMIT" not in env:
        env["MEMBENCH_GIT_COMMIT"] = commit
        if dirty is not None:
            env["MEMBENCH_GIT_DIRTY"] = "1" if dirty else "0"
    return env


def _collect(ray, tasks: dict[Any, tuple[RunSpec, int, int]], progress: bool,
             on_record: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """Wait for every task, handing each new record to `on_record` (when given); report each failure as it
    comes; raise once at the end if any failed. A task of a chain after a failed one fails with it unstarted
    (Ray passes the failure on): it is counted as not started. A Ctrl-C (or SIGTERM) anywhere in the wait stops
    the tasks left (`_stop`): a task leaves `waiting` only once its outcome is filed."""
    from membench.runner import say_done
    from membench.store import warn

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc="runs (ray)", unit="run")
    records, paused = [], []
    failed: dict[int, tuple[int, str]] = {}  # chain -> (place, "run id: message") of its first failed run
    unstarted: list[str] = []
    waiting = list(tasks)
    try:
        while waiting:
            (done,), _ = ray.wait(waiting, num_returns=1)
            spec, chain, place = tasks[done]
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as exc:  # the run raised, or its worker died (crash, out of memory)
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                first = failed.get(chain)
                if first is not None and first[0] < place:
                    unstarted.append(spec.run_id)
                else:
                    if first is not None:  # reported before the run it followed: that one failed first
                        unstarted.append(first[1].split(":")[0])
                    failed[chain] = (place, f"{spec.run_id}: {message}")
                    warn(f"run {spec.run_id} failed: {message}")
                result = None
            waiting.remove(done)
            if isinstance(result, dict) and "paused" in result:
                paused.append(result["paused"])
            elif result is not None:
                records.append(result)
                if bar is None:  # no bars: a line a run, as local runs print
                    say_done(len(records), len(tasks), result)
                if on_record:
                    on_record(result)
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        _stop(ray, waiting)
    if bar is not None:
        bar.close()
    if failed:
        failures = [what for _, what in failed.values()]
        raise MembenchError(
            f"{len(failures)} of {len(tasks)} runs failed ({'; '.join(failures)})"
            + (f"; {len(unstarted)} not started, as they follow a failed run of their checkpoint "
               f"({', '.join(unstarted)})" if unstarted else "")
            + ("; the records made are kept" if records else "")
            + ", rerun the same command to finish the rest")
    if paused:
        raise TrainingPaused(f"{len(paused)} run(s) paused at the training time limit ({paused[0]})")
    return records


def _stop(ray, waiting: list[Any]) -> None:
    """After a Ctrl-C: cancel every task left (a running one gets SIGINT, so one in training finishes its update
    and checkpoints), wait for them, and raise TrainingInterrupted naming the checkpoints made, else
    KeyboardInterrupt. A second Ctrl-C stops the wait at once."""
    from membench.store import warn

    warn("stopping: the runs in training finish their update and checkpoint (Ctrl-C again stops at once)")
    for task in waiting:
        ray.cancel(task, force=False)
    saved = []
    for task in waiting:
        try:
            ray.get(task)
        except ray.exceptions.RayError as exc:
            if isinstance(getattr(exc, "cause", None), TrainingInterrupted):
                saved.append(str(exc.cause).splitlines()[0])
    if saved:
        raise TrainingInterrupted(f"interrupted: {len(saved)} run(s) in training checkpointed ({saved[0]})")
    raise KeyboardInterrupt
