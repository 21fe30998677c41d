"""The Makefile's GPU session logic, run by `make` with Python and the clock stubbed: which sessions start,
with which CUDA-graph setting, and the status the target exits with (a lent GPU's minutes are too scarce to find
a wrong branch there)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("timeout") is None,
                                reason="needs make and coreutils' timeout")

# Stands in for Python: logs each call (with its MEMBENCH_CUDA_GRAPHS and, comma-separated, MEMBENCH_CUDA_GRAPHS_OFF)
# and exits with the status the test gives the graph checks (EBMM's, then the baselines', which name mann and may
# name the models whose graphs differed) and the sessions (EBMM's, then the one whose archive is then.tgz).
PYTHON_STUB = """#!/bin/sh
echo "${MEMBENCH_CUDA_GRAPHS:-unset} off=$(echo $MEMBENCH_CUDA_GRAPHS_OFF | tr ' ' ,) $*" >> "$STUB_LOG"
case "$*" in
  *membench.graph_check*mann*) echo "stub: the baselines' graph check"
    if [ -n "$STUB_THEN_OFF" ]; then echo "graphs off for: $STUB_THEN_OFF"; fi; exit "$STUB_THEN_CHECK";;
  *membench.graph_check*) echo "stub: EBMM's graph check"; exit 0;;
  *then.tgz*) exit "$STUB_THEN";;
  *"membench.cli session"*) exit "$STUB_EBMM";;
esac
exit 99
"""
# Stands in for `date +%s`: each call prints the next line of $STUB_CLOCK, the last one from then on.
DATE_STUB = """#!/bin/sh
head -1 "$STUB_CLOCK"
rest=$(tail -n +2 "$STUB_CLOCK")
if [ -n "$rest" ]; then printf '%s\\n' "$rest" > "$STUB_CLOCK"; fi
"""


def _session(tmp_path: Path, clock: list[int], ebmm: int = 0, then_check: int = 0, then: int = 0,
             then_off: str = "", target: str = "gpu-table1-session", baselines: str = "mann dnc"
             ) -> tuple[int, str, list[str]]:
    """`make TARGET` (TRAIN_S=100, THEN_MIN_S=60, the baselines BASELINES, mann and dnc by default, as both
    TABLE1_THEN and BASELINES_GPU; every variable the target reads given, so none comes from the caller's
    environment) with the stubs; (make's status, its output, the stubbed Python's calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", PYTHON_STUB), ("date", DATE_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "clock").write_text("".join(f"{t}\n" for t in clock))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "log"),
           "STUB_CLOCK": str(tmp_path / "clock"), "STUB_EBMM": str(ebmm), "STUB_THEN_CHECK": str(then_check),
           "STUB_THEN": str(then), "STUB_THEN_OFF": then_off, "MEMBENCH_GIT_COMMIT": "0" * 40,
           "MEMBENCH_GIT_DIRTY": "0"}
    for name in ("MEMBENCH_CUDA_GRAPHS", "MEMBENCH_CUDA_GRAPHS_OFF"):
        env.pop(name, None)
    done = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), target, f"OUT={tmp_path / 'out'}",
                           f"PYTHON={bin_dir / 'python'}", "TRAIN_S=100", "THEN_MIN_S=60", "GRACE=120",
                           f"TABLE1_THEN={baselines}", f"BASELINES_GPU={baselines}", "TABLE1_TIMING=0",
                           "GRAPH_CHECK_ARGS=", "GPU_DEVICE=cuda"],
                          env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return done.returncode, done.stdout + done.stderr, calls


def _sessions(calls: list[str], off: bool = False) -> list[str]:
    """Each session call as "GRAPHS which" (which: ebmm or then), with off: "GRAPHS off=MODELS which"."""
    return [f"{' '.join(call.split()[:2 if off else 1])} {'then' if 'then.tgz' in call else 'ebmm'}" for call in calls
            if "membench.cli session" in call]


def test_the_baselines_train_after_ebmm_finishes_with_their_own_graph_setting(tmp_path):
    """Their graph check fails naming no model (a crash, say): their session runs every model eagerly, EBMM's
    kept its graphs, and the log's last line is shown (no "graph check" line to show instead)."""
    status, output, calls = _session(tmp_path, [1000, 1000, 1010], then_check=1)
    assert status == 0, output
    assert _sessions(calls) == ["1 ebmm", "0 then"], calls
    assert "== 90 s of TRAIN_S left" in output and "the graph check failed naming no model" in output
    assert "stub: the baselines' graph check" in output


def test_only_the_baselines_whose_graphs_differed_train_eagerly(tmp_path):
    """The baselines' check names dnc alone ("graphs off for: dnc", status 1): their session keeps graphs on,
    dnc's off by name (MEMBENCH_CUDA_GRAPHS_OFF); EBMM's session had neither."""
    status, output, calls = _session(tmp_path, [1000, 1000, 1010], then_check=1, then_off="dnc")
    assert status == 0, output
    assert _sessions(calls, off=True) == ["1 off= ebmm", "1 off=dnc then"], calls
    assert "CUDA graphs off for dnc this session" in output


def test_a_skipped_baselines_session_leaves_the_status_ebmms_whatever_their_graph_check_said(tmp_path):
    """Time runs out during the baselines' graph check, which could not run (status 2): the target succeeded."""
    status, output, calls = _session(tmp_path, [1000, 1000, 1090], then_check=2)
    assert status == 0, output
    assert _sessions(calls) == ["1 ebmm"] and "the baselines' session skipped: 10 s of TRAIN_S left" in output


@pytest.mark.parametrize("ebmm, then, sessions, error", [
    (3, 0, ["1 ebmm"], "Error 3"),              # EBMM paused: no baselines' session, its status
    (0, 3, ["1 ebmm", "1 then"], "Error 3"),    # the baselines' session paused: its status
    (0, 1, ["1 ebmm", "1 then"], "Error 1"),
])
def test_the_target_exits_with_the_last_session_that_ran(tmp_path, ebmm, then, sessions, error):
    status, output, calls = _session(tmp_path, [1000, 1000, 1000], ebmm=ebmm, then=then)
    assert status != 0 and error in output, output
    assert _sessions(calls) == sessions, calls


def test_with_no_baselines_named_ebmm_trains_alone_and_their_session_refuses_in_one_line(tmp_path):
    """Every baseline's gpu preset trained (BASELINES_GPU empty): the Table 1 session trains EBMM, checks no
    baselines' graphs and starts no second session, exiting with EBMM's status; the baselines' session says
    what to set, exits 2 and runs nothing."""
    status, output, calls = _session(tmp_path / "table1", [1000, 1000, 1010], baselines="")
    assert status == 0, output
    assert _sessions(calls) == ["1 ebmm"] and not any("mann" in call for call in calls), calls
    status, output, calls = _session(tmp_path / "baselines", [1000], target="gpu-baselines-session", baselines="")
    assert status != 0 and calls == [], calls
    (line,) = [line for line in output.splitlines() if not line.startswith("make")]
    assert line.startswith("gpu-baselines-session: BASELINES_GPU names no model to train;"), output
