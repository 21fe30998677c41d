"""A session on a lent machine as one bounded command.

Machines with a GPU are lent for minutes and start bare, so each session is one command
(`membench session`, `make gpu-session`): several `membench run` processes side by side on the one
device (processes given the same command share its models out; training stops when the session's
time is up, and processes still running `grace_s` later are interrupted, which checkpoints them),
then `membench.packing.pack` puts what they made into the archive that carries it home.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from membench.packing import pack
from membench.errors import EXIT_INTERRUPTED, EXIT_PAUSED, MembenchError
from membench.signals import routed
from membench.store import warn

LOG_LINES = 12  # of a run's log printed at the session's end (the logs stay on the lent machine)
FAILED_LOG_LINES = 40  # ... of a run that failed: room for its traceback


def _out_dir(args: str) -> Path:
    """Where `membench run ARGS` writes: its --out (or the default) as the run command itself parses it."""
    from membench.cli_sessions import parsed

    return Path(parsed("run", "--run", args)["out"])


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def default_interrupt() -> None:
    """In a child before it starts: SIGINT's default action. A session started in a shell script's background
    inherits SIGINT ignored, and so would its processes: they would not stop at the deadline's interrupt and be
    killed `interrupt_wait_s` later, what they did since their last checkpoint lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(processes: Sequence[subprocess.Popen], deadline: float, interrupt_wait_s: float = 30.0) -> list[int]:
    """Wait for `processes` until `deadline` (time.monotonic()), or until this process is interrupted (Ctrl-C,
    SIGTERM); then interrupt every one still running at once (training checkpoints and exits; evaluation stops,
    no record), wait `interrupt_wait_s` for them together and kill the rest (warned about: what it did since its
    last checkpoint is lost). Returns their exit statuses as a shell reports them, a killed one's as interrupted:
    it too was stopped for the time; raises KeyboardInterrupt after stopping them when this process was
    interrupted, before or while they stop. (The session starts its processes in sessions of their own, so an
    interrupt reaches them once, from here, however often this is called: a second would stop their training at
    once, before it checkpoints.)"""
    interrupted = False
    try:
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    except KeyboardInterrupt:
        interrupted = True
    running = [process for process in processes if process.poll() is None]
    for process in running:
        if not getattr(process, "interrupted", False):  # once: a second would stop training before it checkpoints
            process.send_signal(signal.SIGINT)
            process.interrupted = True
    stop, killed = time.monotonic() + interrupt_wait_s, set()
    for process in running:
        while True:
            try:
                process.wait(timeout=max(0.0, stop - time.monotonic()))
                break
            except KeyboardInterrupt:  # this process interrupted while they checkpoint: waited for all the same
                interrupted = True
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed.add(process.pid)
                warn(f"killed {shlex.join(map(str, process.args))}: it did not stop within {interrupt_wait_s:g} s of "
                     f"its interrupt (work since its last checkpoint is lost)")
                break
    if interrupted:
        raise KeyboardInterrupt
    return [EXIT_INTERRUPTED if process.pid in killed else _status(process.returncode) for process in processes]


@contextlib.contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """While inside (packing: the session's archive must be written whole), Ctrl-C and SIGTERM are only noted in
    the yielded list, for the caller to act on after; off the main thread nothing changes."""
    arrived: list[int] = []
    with routed(lambda signum, frame: arrived.append(signum)):
        yield arrived


def check_outs(runs: Sequence[str], results_dir: Path) -> None:
    """MembenchError unless every `membench run` of `runs` writes under `results_dir` (what is packed)."""
    for args in runs:
        if not _out_dir(args).resolve().is_relative_to(Path(results_dir).resolve()):
            raise MembenchError(f"--run '{args}' must write under the results folder {results_dir} "
                                f"(give it --out {results_dir}/...), or what it makes would not be packed")


def run_session(runs: Sequence[str], copies: int, train_time_limit_s: float, device: str, cache: Path,
                archive: Path, results_dir: Path, first: Sequence[Sequence[str]] = (), grace_s: float = 120.0,
                first_cap_s: float = float("inf")) -> int:
    """Run the membench commands `first` one after another, each interrupted after `first_cap_s` or when the
    training time is up (the rest then skipped), then start `copies` processes of `membench run <args>` for each string of
    `runs`, all at once, on the session's device and checkpoint cache, their training ending
    `train_time_limit_s` after the session began (`first` included). Processes still running `grace_s`
    after that are interrupted together (they checkpoint) and, 30 s later, killed (`finish`), so the
    session ends by train_time_limit_s + grace_s + 30 s and packing. Prints the end of each log (LOG_LINES,
    FAILED_LOG_LINES for a command that failed) and packs
    what was written into `archive` and its volumes (`pack`). Returns 0 when every command finished, 3
    when some training paused or a command of `first` was cut short or skipped for the time, else the
    first other exit status (a failing command of `first` does not keep the runs from starting). Interrupted
    (Ctrl-C, SIGTERM), it stops its processes as at the grace's end, packs what they made and raises
    KeyboardInterrupt."""
    results_dir, cache = Path(results_dir), Path(cache)
    check_outs(runs, results_dir)
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    started, clock = time.time(), time.monotonic()
    statuses, children = [], []  # children: every process started, to stop the ones left running when interrupted
    try:
        for command in first:  # cut short or skipped for the time: paused, like training (the rows kept are merged)
            if time.monotonic() >= clock + train_time_limit_s:
                print(f"== skipped membench {shlex.join(command)}: the session's training time is spent", flush=True)
                statuses.append(EXIT_PAUSED)
                continue
            print(f"== membench {shlex.join(command)}", flush=True)  # its output follows, unprefixed
            process = subprocess.Popen([sys.executable, "-m", "membench.cli", *command], start_new_session=True,
                                       preexec_fn=default_interrupt)
            children.append(process)
            deadline = min(clock + train_time_limit_s, time.monotonic() + first_cap_s)
            statuses += [EXIT_PAUSED if status == EXIT_INTERRUPTED else status
                         for status in finish([process], deadline)]
        left = max(0.0, train_time_limit_s - (time.monotonic() - clock))
        processes = []
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, len(runs) * copies)))
        for number, args in enumerate(runs):
            for copy in range(copies):
                log = cache / f"run-{number}-{copy}.log"
                command = [sys.executable, "-m", "membench.cli", "run", *shlex.split(args), "--device", device,
                           "--no-progress", "--checkpoint-dir", str(cache / "checkpoints"),
                           "--train-time-limit", f"{left:.1f}"]
                with open(log, "wb") as handle:  # the CPU's cores shared among the runs (their sampling, their loss)
                    children.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                     env={**os.environ, "OMP_NUM_THREADS": threads},
                                                     start_new_session=True, preexec_fn=default_interrupt))
                processes.append((args, log, children[-1]))
        ended = finish([process for _, _, process in processes], clock + train_time_limit_s + grace_s)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: its processes are stopped (`finish`); what they made travels
        with contextlib.suppress(KeyboardInterrupt):  # (raised again below, once they are stopped)
            finish([child for child in children if child.poll() is None], time.monotonic())
        with _interrupts_held():
            pack(archive, started, results_dir, cache / "checkpoints")
        raise
    with _interrupts_held() as arrived:
        for (args, log, _), status in zip(processes, ended):
            statuses.append(EXIT_PAUSED if status == EXIT_INTERRUPTED else status)  # stopped at the grace's end
            failed = status not in (0, EXIT_PAUSED, EXIT_INTERRUPTED)  # its log stays on the machine: more of it
            tail = log.read_text(errors="replace").splitlines()[-(FAILED_LOG_LINES if failed else LOG_LINES):]
            print(f"== membench run {args} (exit {status})", *tail, sep="\n", flush=True)
        pack(archive, started, results_dir, cache / "checkpoints")
    if arrived:
        raise KeyboardInterrupt
    failed = [status for status in statuses if status not in (0, EXIT_PAUSED)]
    return failed[0] if failed else (EXIT_PAUSED if EXIT_PAUSED in statuses else 0)
