"""`--launcher ray`: the local runner's records, number for number, from Ray tasks on a local Ray."""
from __future__ import annotations

import contextlib
import os
import textwrap
import threading
import time

import pytest
import torch

from membench.errors import MembenchError, TrainingPaused
from membench.runner import run_all
from membench.store import ResultsStore
from membench.suites import get_suite
from tests.test_training import TINY_MODEL

ray = pytest.importorskip("ray")

COUNTED = TINY_MODEL + textwrap.dedent('''

    class CountedLearned(TinyLearned):
        """TinyLearned on N in {16, 32} (one checkpoint), logging every training step to $RAY_TEST_LOG."""

        @classmethod
        def presets(cls, spec, options):
            return {"quick": Preset(TinyConfig(), TrainConfig(steps=6, batch_size=2, lr=1e-2, log_every=1,
                                                              checkpoint_every=100, num_patterns=(16, 32)))}

        def meta_loss(self, patterns, queries):
            import os
            with open(os.environ["RAY_TEST_LOG"], "a") as log:
                log.write("step\\n")
            return super().meta_loss(patterns, queries)


    class LearnedFailsAt16(CountedLearned):
        """CountedLearned on N in {16, 32, 48}, whose read breaks at N = 16 once trained."""

        @classmethod
        def presets(cls, spec, options):
            return {"quick": Preset(TinyConfig(), TrainConfig(steps=6, batch_size=2, lr=1e-2, log_every=1,
                                                              checkpoint_every=100, num_patterns=(16, 32, 48)))}

        def read(self, state, queries):
            if self.spec.num_patterns == 16 and queries.shape[0] > 2 and not self.training:
                raise ValueError("broken at N = 16")
            return super().read(state, queries)


    class FailsAt32(TinyLearned):
        trainable = False

        def __init__(self, spec):
            super().__init__(spec, TinyConfig())

        def read(self, state, queries):
            if self.spec.num_patterns == 32 and queries.shape[0] > 2:  # past the probe
                raise ValueError("broken at N = 32")
            return super().read(state, queries)
''')


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module; user models live in a folder on the workers' PYTHONPATH."""
    folder = tmp_path_factory.mktemp("ray_models")
    (folder / "ray_models.py").write_text(COUNTED)
    log = folder / "steps.log"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(folder), os.getcwd()]),
                                       "RAY_TEST_LOG": str(log)}})
    import sys
    sys.path.insert(0, str(folder))
    os.environ["RAY_TEST_LOG"] = str(log)
    yield log
    ray.shutdown()
    sys.path.remove(str(folder))


def _specs(models, seeds=(0, 1), num_patterns=(16, 32), queries=64):
    return get_suite("table1").expand("table1", models, seeds, queries, "quick", num_patterns)


def test_ray_records_equal_the_local_runner(local_ray, tmp_path, capfd):
    """The same records but for when and how long; both print a line on stderr as each run finishes when no
    progress bars are shown, and hand each record to `on_record`."""
    specs = _specs(("hopfield_hebb", "raw_slots"))
    run_all(specs, tmp_path / "local", device="cpu", progress=False, command="same")
    assert capfd.readouterr().err.count(" done: table1-") == 8
    handed = []
    made = run_all(specs, tmp_path / "ray", device="cpu", progress=False, launcher="ray", command="same",
                   on_record=handed.append)
    assert len(made) == len(specs) == 8 and handed == made

    def timeless(out):  # and the CPU threads, which Ray sets to a task's CPUs
        return {r["run_id"]: {**{k: v for k, v in r.items() if k not in ("eval_time_s", "finished_at", "wall_time_s")},
                              "environment": {k: v for k, v in r["environment"].items() if k != "threads"}}
                for r in ResultsStore(out).records()}

    assert timeless(tmp_path / "ray") == timeless(tmp_path / "local")
    assert "run 8 of at most 8 done: table1-" in capfd.readouterr().err


def test_learned_model_trains_once_for_all_its_runs(local_ray, tmp_path):
    local_ray.write_text("")
    specs = _specs(("ray_models:CountedLearned",), seeds=(0,))
    made = run_all(specs, tmp_path / "out", device="cpu", progress=False, launcher="ray",
                   checkpoint_dir=tmp_path / "ck")
    assert len(made) == 2 and len({r["training"]["checkpoint_key"] for r in made}) == 1
    assert local_ray.read_text().count("step") == 6  # 6 updates, trained by one task only
    local = run_all(specs, tmp_path / "local", device="cpu", progress=False, checkpoint_dir=tmp_path / "ck-local")
    trained = {r["run_id"]: (r["training"]["weights_digest"], r["errors"]) for r in made}  # an eager model: the
    assert {r["run_id"]: (r["training"]["weights_digest"], r["errors"]) for r in local} == trained  # same weights


def test_interrupted_sweep_finishes_only_what_is_missing(local_ray, tmp_path):
    specs = _specs(("hopfield_hebb",), seeds=(0, 1, 2))
    run_all(specs[:2], tmp_path, device="cpu", progress=False, launcher="ray")
    finished = {r["run_id"]: r["finished_at"] for r in ResultsStore(tmp_path).records()}
    made = run_all(specs, tmp_path, device="cpu", progress=False, launcher="ray")
    assert sorted(r["run_id"] for r in made) == sorted(s.run_id for s in specs[2:])
    records = ResultsStore(tmp_path).records()
    assert len(records) == len(specs) and all(r["finished_at"] == finished[r["run_id"]] for r in records
                                              if r["run_id"] in finished)


def test_a_failed_run_is_reported_and_the_others_are_kept(local_ray, tmp_path):
    specs = _specs(("ray_models:FailsAt32",), seeds=(0,), num_patterns=(16, 32, 48), queries=200)
    with pytest.raises(MembenchError, match=r"1 of 3 runs failed .*broken at N = 32.*rerun the same command"):
        run_all(specs, tmp_path, device="cpu", progress=False, launcher="ray")
    assert sorted(r["task"]["num_patterns"] for r in ResultsStore(tmp_path).records()) == [16, 48]


def test_the_runs_after_a_failed_one_in_its_chain_are_not_started_and_said_so(local_ray, tmp_path):
    """A learned model's runs share one checkpoint and run one after another: when the first fails, the others
    are not started (as a local run stops there), and the message says so rather than repeating its error."""
    local_ray.write_text("")
    specs = _specs(("ray_models:LearnedFailsAt16",), seeds=(0,), num_patterns=(16, 32, 48), queries=200)
    with pytest.raises(MembenchError) as caught:
        run_all(specs, tmp_path / "out", device="cpu", progress=False, launcher="ray", checkpoint_dir=tmp_path / "ck")
    message = str(caught.value)
    assert message.startswith("1 of 3 runs failed (") and message.count("broken at N = 16") == 1, message
    assert "2 not started, as they follow a failed run of their checkpoint" in message, message
    assert "records made are kept" not in message and not ResultsStore(tmp_path / "out").records()


def test_a_task_trains_until_the_calls_deadline_not_for_a_limit_of_its_own(local_ray, tmp_path):
    """--train-time-limit bounds the call: a task that starts after the deadline (here a run of a checkpoint
    trained 1 of 6 updates) trains no update and comes back paused; without a deadline it trains the rest."""
    from membench.ray_launcher import _execute

    local_ray.write_text("")
    (spec,) = _specs(("ray_models:CountedLearned",), seeds=(0,), num_patterns=(16,))
    with pytest.raises(TrainingPaused, match="stopped at step 1 of 6"):
        run_all([spec], tmp_path / "out", device="cpu", progress=False, checkpoint_dir=tmp_path / "ck",
                train_time_limit_s=0)  # one update of the new model, locally
    args = (str(tmp_path / "out"), "cpu", str(tmp_path / "ck"), "test", False)
    assert "paused" in _execute(spec, *args, time.time() - 1, True, {})
    assert local_ray.read_text().count("step") == 1  # none more
    record = _execute(spec, *args, None, True, {})
    assert record["training"]["steps"] == 6 and local_ray.read_text().count("step") == 6


def test_workers_use_the_drivers_data_folder_and_provenance(local_ray, tmp_path, monkeypatch):
    """--data-dir sets the driver's data folder only; the workers get it, and the commit and dirty flag the
    driver found before any run (not their own look at the tree when a run ends)."""
    from membench import datasets
    from membench.provenance import git_state
    from membench.suites import SUITES
    from tests.test_datasets import write_fixture_data

    root = write_fixture_data(tmp_path / "elsewhere")
    monkeypatch.delenv("MEMBENCH_DATA", raising=False)
    monkeypatch.setattr(datasets, "_data_dir_override", root)
    monkeypatch.setenv("MEMBENCH_GIT_COMMIT", "the-drivers")  # set after the workers started: only passed on
    monkeypatch.setenv("MEMBENCH_GIT_DIRTY", "1")
    git_state.cache_clear()
    try:
        specs = SUITES["fig3-omniglot"].expand("fig3-omniglot", ("raw_slots",), (0,), 16, "quick",
                                               num_patterns=(16,))
        made = run_all(specs[:1], tmp_path / "out", device="cpu", progress=False, launcher="ray")
    finally:
        git_state.cache_clear()
    assert len(made) == 1
    assert (made[0]["environment"]["git_commit"], made[0]["environment"]["git_dirty"]) == ("the-drivers", True)


def test_the_workers_device_follows_the_cluster_not_the_driver():
    """'auto' is CUDA for a learned model when any node has a GPU (the driver's may have none), the CPU for the
    others (a GPU per Hebb run would run them one at a time); --device cuda on a cluster without a GPU is refused
    before any task starts."""
    from membench.ray_launcher import _cluster_device

    class Cluster:
        def __init__(self, resources):
            self.cluster_resources = lambda: resources

    with_gpu, without = Cluster({"CPU": 64.0, "GPU": 2.0}), Cluster({"CPU": 2.0})
    assert [_cluster_device(with_gpu, d, True) for d in ("auto", "cuda", "cpu")] == ["cuda", "cuda", "cpu"]
    assert [_cluster_device(with_gpu, d, False) for d in ("auto", "cuda")] == ["cpu", "cuda"]  # no GPU held for Hebb
    assert [_cluster_device(without, d, True) for d in ("auto", "cpu")] == ["cpu", "cpu"]
    with pytest.raises(MembenchError, match="--device cuda: the Ray cluster has no GPU"):
        _cluster_device(without, "cuda", True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a driver without CUDA")
def test_cuda_is_asked_of_the_cluster_not_of_the_driver(local_ray, tmp_path):
    specs = _specs(("raw_slots",), seeds=(0,), num_patterns=(16,))
    with pytest.raises(MembenchError, match="the Ray cluster has no GPU"):  # not "torch sees no CUDA device" here
        run_all(specs, tmp_path, device="cuda", progress=False, launcher="ray")
    assert [r["environment"]["device"] for r in run_all(specs, tmp_path, progress=False, launcher="ray")] == ["cpu"]


@contextlib.contextmanager
def _server(answer: bytes):
    """'127.0.0.1:PORT' of a server that reads what a client sends, answers `answer` (b'': says nothing), then
    keeps the connection open until the block ends."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(64)
                connection.sendall(answer)
                done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        listener.close()
        thread.join(10)


def test_an_address_that_is_not_a_cluster_is_refused_in_one_line_before_ray_waits_for_it(monkeypatch):
    """--address must be auto, ray://… or a HOST:PORT where a gRPC server answers, as a Ray head's does: Ray
    itself raised a ValueError on 'foo', waited minutes on a closed port and (2.60) was still waiting after two
    minutes at a port where a web server answered."""
    monkeypatch.setattr("membench.ray_launcher.PROBE_TIMEOUT_S", 0.5)
    import socket

    from membench.ray_launcher import _check_address

    for address in ("auto", "local", "ray://head:10001", None):
        _check_address(address)
    for address in ("foo", "", ":6379", "[]:6379", "head:port", "head:70000"):
        with pytest.raises(MembenchError, match="is not HOST:PORT"):
            _check_address(address)
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MembenchError, match=f"--address 127.0.0.1:{port}: nothing answers there"):
        _check_address(f"127.0.0.1:{port}")
    for answer, accepted in ((b"HTTP/1.0 400 Bad Request\r\n\r\n", False),  # a web server (the dashboard)
                             (b"", False),  # one that says nothing
                             (bytes([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]), True)):  # gRPC's SETTINGS
        with _server(answer) as served:
            if accepted:
                _check_address(served)
            else:
                with pytest.raises(MembenchError, match=f"--address {served}: something answers there, but not "
                                                        "as a Ray head does"):
                    _check_address(served)
    with _server(b"HTTP/1.0 400 Bad Request\r\n\r\n") as served:  # with TLS, the gRPC greeting is not plain
        monkeypatch.setenv("RAY_USE_TLS", "1")
        _check_address(served)
        monkeypatch.delenv("RAY_USE_TLS")
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"  # what Ray joins without --address: checked the same way
    try:
        with pytest.raises(MembenchError, match=rf"\$RAY_ADDRESS 127.0.0.1:{port}: nothing answers there"):
            _check_address(None)
        _check_address("local")  # an address given wins
    finally:
        del os.environ["RAY_ADDRESS"]


@pytest.mark.slow
def test_ctrl_c_on_the_driver_checkpoints_the_training_task_and_the_rerun_resumes(tmp_path):
    """A Ctrl-C on `membench run --launcher ray` stops its task as a local run stops: the update in flight
    finishes and is checkpointed (Ray's cancel sends the worker SIGINT), the exit status is 130, and the rerun
    trains only the rest."""
    import signal

    from tests.test_failures import SLOW_LEARNED, _lines_until, _membench

    (tmp_path / "slow_learned.py").write_text(SLOW_LEARNED)
    hold = tmp_path / "hold"
    hold.mkdir()
    args = ["run", "--launcher", "ray", "--model", "slow_learned:SlowLearned", "--num-patterns", "16",
            "--queries", "16", "--checkpoint-dir", "ck", "--out", "out", "--no-progress", "--device", "cpu"]
    driver = _membench(tmp_path, *args, MEMBENCH_TEST_HOLD=str(hold), MEMBENCH_TEST_WAIT="1", RAY_ADDRESS="")
    updates = hold / "updates"
    try:
        for _ in range(4800):  # the worker is in its update 1, held there until the test lets it go on
            if updates.exists() or driver.poll() is not None:
                break
            time.sleep(0.05)
        assert driver.poll() is None and updates.exists(), driver.communicate()[0]
        driver.send_signal(signal.SIGINT)
        said = _lines_until(driver, "stopping: the runs in training finish their update")  # the task is cancelled
    finally:
        (hold / "go").touch()
    output = said + driver.communicate(timeout=120)[0]
    assert driver.returncode == 130 and "Traceback" not in output, output
    assert "1 run(s) in training checkpointed (interrupted: meta-training of SlowLearned checkpointed at step" in output
    (checkpoint,) = (tmp_path / "ck").glob("*.pt")
    stopped = torch.load(checkpoint, weights_only=False)["step"]
    assert 1 <= stopped < 40 and updates.read_text().count("\n") == stopped
    rerun = _membench(tmp_path, *args, RAY_ADDRESS="")
    output = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, output
    curve = torch.load(checkpoint, weights_only=False)["curve"]
    assert [row["step"] for row in curve] == list(range(1, 41))  # resumed, no update trained twice
