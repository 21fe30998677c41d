"""`--launcher ray`: the local runner's records, number for number, from Ray tasks on a local Ray."""
from __future__ import annotations

import os
import textwrap

import pytest
import torch

from membench.errors import MembenchError
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


def _records(out) -> dict[str, list[float]]:
    return {r["run_id"]: r["errors"] for r in ResultsStore(out).records()}


def test_ray_records_equal_the_local_runner(local_ray, tmp_path, capfd):
    """Both print a line on stderr as each run finishes when no progress bars are shown."""
    specs = _specs(("hopfield_hebb", "raw_slots"))
    run_all(specs, tmp_path / "local", device="cpu", progress=False)
    assert capfd.readouterr().err.count(" done: table1-") == 8
    made = run_all(specs, tmp_path / "ray", device="cpu", progress=False, launcher="ray")
    assert len(made) == len(specs) == 8
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert "run 8 of at most 8 done: table1-" in capfd.readouterr().err


def test_learned_model_trains_once_for_all_its_runs(local_ray, tmp_path):
    local_ray.write_text("")
    specs = _specs(("ray_models:CountedLearned",), seeds=(0,))
    made = run_all(specs, tmp_path / "out", device="cpu", progress=False, launcher="ray",
                   checkpoint_dir=tmp_path / "ck")
    assert len(made) == 2 and len({r["training"]["checkpoint_key"] for r in made}) == 1
    assert local_ray.read_text().count("step") == 6  # 6 updates, trained by one task only


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


def test_an_address_that_is_not_a_cluster_is_refused_in_one_line_before_ray_waits_for_it():
    """--address must be auto, ray://… or a HOST:PORT something answers at: Ray itself raised a ValueError on
    'foo' and waited minutes on a closed port."""
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
