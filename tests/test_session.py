"""A remote session's archive: `membench pack` there, `membench unpack` here, the next session resumes."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from membench import checkpoints
from membench.cli import main
from membench.errors import EXIT_INTERRUPTED, EXIT_PAUSED
from membench.session import finish, run_session
from membench.set_aside import done
from membench.throughput import COLUMNS, merge
from tests.conftest import REPO_ROOT, exited_cleanly, records_in
from tests.test_training import TINY_MODEL

ROW = dict.fromkeys(COLUMNS, 1) | {"device": "cpu", "device_name": "x86_64", "model": "ebmm", "preset": "gpu",
                                   "commit": "abc", "cuda_graph": False, "compiled": False, "precision": "float32",
                                   "measured_at": "2026-11-24T00:00:00Z"}


def test_a_session_archive_carries_new_results_and_paused_training_home(tmp_path: Path, monkeypatch):
    """Machine 1 pauses after one update and packs only what it wrote since the session began (the
    records and curves of the finished run, the paused checkpoint weights only); unpacked here, the
    results land at their paths and the checkpoint is shipped, so machine 2 resumes it to the end."""
    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "m1" / "results" / "bench" / "old.csv"
    old.parent.mkdir(parents=True)
    old.write_text("a,b")
    os.utime(old, (0, 0))
    mark = tmp_path / "m1" / "started"
    mark.touch()
    run = ["run", "--model", "tiny_learned:TinyLearned", "--queries", "32", "--no-progress"]
    finished = CliRunner().invoke(main, [*run, "--num-patterns", "8", "--out", "m1/results/table1",
                                         "--checkpoint-dir", "m1/ck"])
    paused = CliRunner().invoke(main, [*run, "--num-patterns", "16", "--budget", "200", "--out",
                                       "m1/results/table1", "--checkpoint-dir", "m1/ck", "--train-time-limit", "0"])
    assert finished.exit_code == 0, finished.output
    assert paused.exit_code == EXIT_PAUSED, paused.output
    packed = CliRunner().invoke(main, ["pack", "--to", "m1/out/session.tgz", "--since", str(mark), "--results",
                                       "m1/results", "--checkpoint-dir", "m1/ck"])
    assert packed.exit_code == 0, packed.output
    with tarfile.open(tmp_path / "m1" / "out" / "session.tgz") as tar:
        names = tar.getnames()
    assert "results/bench/old.csv" not in names
    assert sum(n.startswith("results/table1/runs/") for n in names) == 1
    assert len([n for n in names if n.startswith("checkpoints/")]) == 2

    remote_rows = [{**ROW, "device": "cuda", "device_name": "H200", "episodes_per_s": 3000.0,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    deleted_here = {**ROW, "model": "lstm", "measured_at": "2026-01-01T00:00:00Z"}  # in the checkout it left with
    merge(tmp_path / "m1" / "results" / "bench" / "throughput.csv", [deleted_here, *remote_rows])  # + the session's
    merge(tmp_path / "here" / "results" / "bench" / "throughput.csv", [ROW])  # a row made here meanwhile
    packed = CliRunner().invoke(main, ["pack", "--to", "m1/out/session.tgz", "--since", str(mark), "--results",
                                       "m1/results", "--checkpoint-dir", "m1/ck"])
    assert packed.exit_code == 0, packed.output
    unpacked = CliRunner().invoke(main, ["unpack", "m1/out/session.tgz", "--root", "here"])
    assert unpacked.exit_code == 0, unpacked.output
    rows = pd.read_csv(tmp_path / "here" / "results" / "bench" / "throughput.csv")
    assert sorted(rows.device) == ["cpu", "cuda"]  # the session's row merged beside the one made here
    assert "lstm" not in set(rows.model)  # a row measured before the session is not carried back
    (record,) = records_in(tmp_path / "here" / "results" / "table1")
    assert record["task"]["num_patterns"] == 8
    shipped_dir = tmp_path / "here" / "results" / "checkpoints"  # the checkout's own, not this one's
    shipped = {p.name: torch.load(p, weights_only=False) for p in shipped_dir.glob("*.pt")}
    assert {c["step"]: "optimizer" in c for c in shipped.values()} == {1: True, 6: False}  # AdamW's while unfinished

    monkeypatch.setattr(checkpoints, "SHIPPED_CHECKPOINTS", shipped_dir)  # machine 2 runs from that checkout
    resumed = CliRunner().invoke(main, [*run, "--num-patterns", "16", "--budget", "200", "--out", "m2",
                                        "--checkpoint-dir", "m2/ck"])
    assert resumed.exit_code == 0 and "holds weights only" not in resumed.output, resumed.output
    (again,) = records_in(tmp_path / "m2")
    assert [h["steps"] for h in again["training"]["history"]] == [[0, 1], [1, 6]]
    assert [h["optimizer"] for h in again["training"]["history"]] == ["fresh", "resumed"]


def _checkpoint(weights: torch.Tensor, step: int) -> dict:
    """A minimal training checkpoint (the keys `checkpoints.CHECKPOINT_KEYS` requires, and a history)."""
    return {"model": {"w": weights}, "generator": torch.Generator().get_state(), "step": step, "elapsed_s": 1.0,
            "curve": [], "history": []}


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_checks_where_it_writes_before_writing_and_keeps_the_further_training_curve(tmp_path: Path):
    """A folder (or a file) in the way of a member, or an unreadable local throughput CSV its rows would be
    merged into, stops the unpack before any file is written; a training curve that arrives shorter than the
    one here (sessions unpacked out of order) is kept out, with a warning."""
    root = tmp_path / "here"
    (root / "results" / "table1" / "table1.md").mkdir(parents=True)  # a folder where the archive has a file
    members = {"results/aaa/new.txt": b"new", "results/table1/table1.md": b"table"}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "a.tgz", members)), "--root", str(root)])
    assert result.exit_code == 1 and "table1.md is a folder" in result.output and "nothing was unpacked" in result.output
    assert exited_cleanly(result) and not (root / "results" / "aaa").exists()
    (root / "results" / "file").write_text("a file")
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "b.tgz", {"results/aaa/new.txt": b"new",
                                                                                  "results/file/x.md": b"x"})),
                                       "--root", str(root)])
    assert result.exit_code == 1 and "file is a file, not a folder" in result.output
    assert not (root / "results" / "aaa").exists()
    (root / "results" / "bench").mkdir()
    (root / "results" / "bench" / "throughput.csv").write_text("<<<<<<< HEAD\n")  # a merge conflict left behind
    members = {"results/aaa/new.txt": b"new", "results/bench/throughput.csv": (root / "results/bench/throughput.csv")
               .read_bytes()}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "c.tgz", members)), "--root", str(root)])
    assert result.exit_code == 1 and "is not a throughput CSV" in result.output, result.output
    assert "nothing was unpacked" in result.output and not (root / "results" / "aaa").exists()
    curve = root / "results" / "t" / "training" / "m-quick-0123456789ab.csv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n5,1.0,2.0,0.5\n")
    shorter = {"results/t/training/m-quick-0123456789ab.csv": b"step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n"}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "d.tgz", shorter)), "--root", str(root)])
    assert result.exit_code == 0 and "kept over the archive's" in result.output and "(step 5 against 1)" in result.output
    assert "5,1.0,2.0,0.5" in curve.read_text()


def test_unpack_ships_a_checkpoint_retrained_with_other_weights_and_a_curve_follows_its_records(tmp_path: Path):
    """A built-in model whose code changed trains afresh under the same key (its code is not part of the key): the
    retrained checkpoint, trained further, replaces the shipped one though its weights differ. A training curve
    follows the records that use it: kept here when the archive's records are kept out, taken with them otherwise
    (shorter or not)."""
    from membench.checkpoints import saved_bytes

    root = tmp_path / "here"
    (root / "results" / "checkpoints").mkdir(parents=True)
    torch.save(_checkpoint(torch.rand(3), step=250), root / "results" / "checkpoints" / "m-gpu-0123456789ab.pt")
    retrained = {**_checkpoint(torch.rand(5), step=1000), "model": {"w": torch.rand(5), "b": torch.rand(2)}}
    record = json.loads((Path(__file__).resolve().parent.parent / "results" / "table1" / "runs" /
                         "table1-learned-ebmm-N16-s0-da6a44d483.json").read_text())
    curve = f"results/table1/{record['training']['curve']}"
    members = {"checkpoints/m-gpu-0123456789ab.pt": saved_bytes(retrained),
               "results/table1/runs/table1-learned-ebmm-N16-s0-da6a44d483.json": json.dumps(record).encode(),
               curve: b"step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n"}
    (root / curve).parent.mkdir(parents=True)
    (root / curve).write_text("step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n9,1.0,2.0,0.5\n")
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "a.tgz", members)), "--root", str(root)])
    assert result.exit_code == 0, result.output
    shipped = torch.load(root / "results" / "checkpoints" / "m-gpu-0123456789ab.pt", weights_only=False)
    assert shipped["step"] == 1000 and set(shipped["model"]) == {"w", "b"}
    assert (root / curve).read_bytes() == members[curve]  # its record arrived and was written: its curve too
    better = {**record, "finished_at": "2099-01-01T00:00:00Z"}  # a record here the archive's does not beat
    (root / "results/table1/runs/table1-learned-ebmm-N16-s0-da6a44d483.json").write_text(json.dumps(better))
    (root / curve).write_text("step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n")
    longer = {**members, curve: b"step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n9,1.0,2.0,0.5\n"}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "b.tgz", longer)), "--root", str(root)])
    assert result.exit_code == 0 and "the records that use it are kept here" in result.output, result.output
    assert (root / curve).read_text() == "step,loss,error,elapsed_s\n1,2.0,3.0,0.1\n"


def test_unpack_names_a_volume_left_beside_and_says_when_an_archive_holds_nothing(tmp_path: Path):
    root = tmp_path / "here"
    (root / "results").mkdir(parents=True)
    first = _archive(tmp_path / "session.tgz", {"results/t/a.md": b"a"})
    second = _archive(tmp_path / "session-2.tgz", {"results/t/b.md": b"b"})
    result = CliRunner().invoke(main, ["unpack", str(first), "--root", str(root)])
    assert result.exit_code == 1 and f"has the volume {second} beside it, not given" in result.output
    assert exited_cleanly(result) and not (root / "results" / "t").exists()
    (root / "results" / "t" / "b.md").mkdir(parents=True)  # in the way of the second volume's file
    result = CliRunner().invoke(main, ["unpack", str(first), str(second), "--root", str(root)])
    assert result.exit_code == 1 and "b.md is a folder" in result.output and not (root / "results/t/a.md").exists()
    (root / "results" / "t" / "b.md").rmdir()
    result = CliRunner().invoke(main, ["unpack", str(first), str(second), "--root", str(root)])
    assert result.exit_code == 0 and sorted(p.name for p in (root / "results" / "t").iterdir()) == ["a.md", "b.md"]
    empty = _archive(tmp_path / "empty.tgz", {})
    result = CliRunner().invoke(main, ["unpack", str(empty), "--root", str(root)])
    assert result.exit_code == 0 and "no file in it, nothing unpacked" in result.output, result.output


def test_unpack_refuses_an_unsafe_or_corrupt_archive_and_writes_nothing(tmp_path: Path):
    """A member outside results/ and checkpoints/ (or climbing out with ..) stops the whole unpack before
    any file is written; a truncated archive is one line naming the file; no traceback."""
    root = tmp_path / "here"
    (root / "results").mkdir(parents=True)
    for bad in ("../evil.json", "results/../../evil.json", "elsewhere/x.json", "checkpoints/sub/x.pt"):
        archive = _archive(tmp_path / "bad.tgz", {"results/table1/runs/fine.json": b"{}", bad: b"x"})
        result = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(root)])
        assert result.exit_code == 1 and f"member '{bad}'" in result.output and "nothing was unpacked" in result.output
        assert exited_cleanly(result)
        assert list(root.rglob("*")) == [root / "results"] and not (tmp_path / "evil.json").exists()
    good = _archive(tmp_path / "good.tgz", {"results/table1/runs/fine.json": b"{}" * 5000})
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(good.read_bytes()[:60])
    result = CliRunner().invoke(main, ["unpack", str(truncated), "--root", str(root)])
    assert result.exit_code == 1 and "is not a readable session archive" in result.output, result.output
    assert exited_cleanly(result) and list(root.rglob("*")) == [root / "results"]


_COMMITTED_CSV = (REPO_ROOT / "results" / "bench" / "throughput.csv").read_text()
_TEXT_BUDGET = pd.read_csv(io.StringIO(_COMMITTED_CSV), dtype=str, keep_default_na=False).head(1).assign(budget="abc")


@pytest.mark.parametrize("csv", [b"\xff\xfe\x00binary", b"", b"a,b\n1,2\n",
                                 b"device,model,episodes_per_s\ncpu,ebmm,10\n",
                                 # a row with text for its budget (its key would then match no committed row)
                                 _TEXT_BUDGET.to_csv(index=False).encode()])
def test_unpack_refuses_a_throughput_table_that_is_not_one_and_writes_nothing(tmp_path: Path, csv: bytes):
    """The archive's results/bench/throughput.csv is checked with the records, before anything is written: a
    binary, empty, foreign or incomplete table is one line naming the member, and the checkout is untouched."""
    root = tmp_path / "here"
    (root / "results" / "bench").mkdir(parents=True)
    (root / "results" / "bench" / "throughput.csv").write_text("as it was")
    archive = _archive(tmp_path / "s.tgz", {"results/table1/a.md": b"first", "results/bench/throughput.csv": csv})
    result = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(root)])
    assert result.exit_code == 1 and exited_cleanly(result), result.output
    assert "member results/bench/throughput.csv is not" in result.output and "nothing was unpacked" in result.output
    assert not (root / "results" / "table1").exists()
    assert (root / "results" / "bench" / "throughput.csv").read_text() == "as it was"


def test_an_unpack_that_cannot_write_a_file_says_which_and_what_it_wrote_before(tmp_path: Path, monkeypatch):
    """A target that cannot be written though nothing is in its way (here the disk refuses it) stops the unpack
    with one line naming it and how many files came before; those are whole and no temporary file is left."""
    from membench import archive as archive_module

    root = tmp_path / "here"
    (root / "results" / "table1").mkdir(parents=True)
    packed = _archive(tmp_path / "s.tgz", {"results/table1/a.md": b"first", "results/table1/b.md": b"second",
                                             "results/table1/c.md": b"third"})
    real = archive_module.write_atomic

    def refusing(path, write):
        if Path(path).name == "b.md":
            raise OSError(28, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(archive_module, "write_atomic", refusing)
    result = CliRunner().invoke(main, ["unpack", str(packed), "--root", str(root)])
    assert result.exit_code == 1 and exited_cleanly(result), result.output
    assert f"could not write {root / 'results' / 'table1' / 'b.md'}" in result.output
    assert "written before it: 1 file(s); fix the cause and unpack again" in result.output
    assert (root / "results" / "table1" / "a.md").read_bytes() == b"first"
    assert sorted(p.name for p in (root / "results" / "table1").iterdir()) == ["a.md"]


def test_a_session_whose_run_fails_exits_with_its_status_and_still_packs(tmp_path: Path, monkeypatch):
    """A run that fails (here a model whose read raises) does not stop the others: the session packs what they made,
    shows the failed run's own message and exits with its status (not 0, not 3: not a pause to resume)."""
    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    (tmp_path / "failing.py").write_text("from baselines.raw_slots import RawSlotMemory\n\n\n"
                                         "class Failing(RawSlotMemory):\n"
                                         "    def read(self, state, queries):\n"
                                         "        raise ValueError('this model fails on purpose')\n")
    monkeypatch.chdir(tmp_path)
    good = "--model tiny_learned:TinyLearned --num-patterns 8 --queries 32 --out results/table1"
    failing = "--model failing:Failing --num-patterns 8 --queries 32 --out results/table1"
    result = CliRunner().invoke(main, ["session", "--run", failing, "--run", good,
                                       "--train-time-limit", "300", "--device", "cpu", "--to", "out/session.tgz",
                                       "--cache", "session"])
    assert result.exit_code == 1, result.output
    assert "failing:Failing" in result.output and "(exit 1)" in result.output and "fails on purpose" in result.output
    assert result.output.rstrip().splitlines()[-1] == ("Error: session ended with status 1: a command failed (its "
                                                       "error is above); the archive holds what the others finished")
    with tarfile.open(tmp_path / "out" / "session.tgz") as tar:
        names = tar.getnames()
    assert any(name.startswith("results/table1/runs/") for name in names), names  # the good run's record
    assert any(name.startswith("checkpoints/") for name in names), names


def test_a_failing_first_command_does_not_keep_the_runs_from_starting(tmp_path: Path, monkeypatch, capsys):
    """A command of `first` (the session's timing) that fails is reported by its status; the runs start anyway,
    and the session packs their records."""
    monkeypatch.chdir(tmp_path)
    status = run_session(["--model hopfield_hebb --num-patterns 8 --queries 16 --out results/table1"], copies=1,
                         train_time_limit_s=300, device="cpu", cache=tmp_path / "session",
                         archive=tmp_path / "out" / "session.tgz", results_dir=tmp_path / "results",
                         first=[["no-such-command"]])
    assert status == 2, capsys.readouterr().out  # click's status for an unknown command
    assert len(list((tmp_path / "results" / "table1" / "runs").glob("*.json"))) == 1
    with tarfile.open(tmp_path / "out" / "session.tgz") as tar:
        assert sum(name.startswith("results/table1/runs/") for name in tar.getnames()) == 1


def test_a_session_runs_copies_side_by_side_and_packs_what_they_made(tmp_path: Path, monkeypatch):
    """Two processes given one command over two models each train one of them (one stretch of training
    per checkpoint, nothing trained twice); the session exits 0 and its archive holds both records and
    both checkpoints."""
    (tmp_path / "tiny_learned.py").write_text(TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    args = "--model tiny_learned:TinyLearned --num-patterns 8,16 --queries 32 --out results/table1"
    result = CliRunner().invoke(main, ["session", "--run", args, "--copies", "2", "--train-time-limit", "300",
                                       "--device", "cpu", "--to", "out/session.tgz", "--cache", "session"])
    assert result.exit_code == 0, result.output
    records = records_in(tmp_path / "results" / "table1")
    assert sorted(r["task"]["num_patterns"] for r in records) == [8, 16]
    assert all(len(r["training"]["history"]) == 1 for r in records)
    with tarfile.open(tmp_path / "out" / "session.tgz") as tar:
        names = tar.getnames()
    assert sum(n.startswith("checkpoints/") for n in names) == 2
    assert sum(n.startswith("results/table1/runs/") for n in names) == 2


def test_pack_leaves_out_checkpoints_only_used_or_unreadable(tmp_path: Path):
    """A cache copy of a shipped checkpoint at the same step was only used (evaluation): not packed; one
    trained further is packed weights only; an unreadable one is warned about and the archive still made."""
    from membench.packing import pack

    shipped, cache = tmp_path / "results" / "checkpoints", tmp_path / "cache"
    shipped.mkdir(parents=True)
    cache.mkdir()
    checkpoint = {**_checkpoint(torch.zeros(2), step=6), "optimizer": {}}
    torch.save(checkpoint, shipped / "used.pt")
    torch.save(checkpoint, shipped / "trained.pt")
    since = os.stat(shipped / "used.pt").st_mtime + 1
    torch.save(checkpoint, cache / "used.pt")
    torch.save({**checkpoint, "step": 9}, cache / "trained.pt")
    (cache / "broken.pt").write_bytes(b"not a checkpoint")
    for path in cache.iterdir():
        os.utime(path, (since + 1, since + 1))
    names = pack(tmp_path / "session.tgz", since, tmp_path / "results", cache)
    assert names == ["checkpoints/trained.pt"]
    with tarfile.open(tmp_path / "session.tgz") as tar:
        packed = torch.load(io.BytesIO(tar.extractfile("checkpoints/trained.pt").read()), weights_only=False)
    assert packed["step"] == 9 and "optimizer" not in packed


def test_pack_leaves_out_an_unreadable_record_so_that_the_others_unpack(tmp_path: Path, capsys):
    """unpack refuses an archive holding an unreadable record (the lent machine is gone by then): pack leaves such a
    record out, named, and the archive of the rest unpacks."""
    from membench.packing import pack

    record = next((REPO_ROOT / "results" / "table1" / "runs").glob("table1-hopfield_hebb-N16-*.json"))
    runs = tmp_path / "results" / "t" / "runs"
    runs.mkdir(parents=True)
    (runs / record.name).write_bytes(record.read_bytes())
    (runs / "table1-x.json").write_bytes(record.read_bytes()[:100])  # truncated
    (tmp_path / "results" / "bench").mkdir()
    (tmp_path / "results" / "bench" / "throughput.csv").write_text("device,model\ncpu,ebmm")  # cut short too
    names = pack(tmp_path / "session.tgz", 0.0, tmp_path / "results", tmp_path / "cache")
    assert names == [f"results/t/runs/{record.name}"]
    err = capsys.readouterr().err
    assert "table1-x.json is unreadable" in err and "is not a complete throughput CSV" in err
    checkout = tmp_path / "checkout"
    (checkout / "results").mkdir(parents=True)
    unpacked = CliRunner().invoke(main, ["unpack", str(tmp_path / "session.tgz"), "--root", str(checkout)])
    assert unpacked.exit_code == 0, unpacked.output
    assert (checkout / "results" / "t" / "runs" / record.name).read_bytes() == record.read_bytes()


@pytest.mark.parametrize("run", ["--model hopfield_hebb --out elsewhere", "--out=elsewhere/x --model hopfield_hebb",
                                 "--model hopfield_hebb"])  # the last: run's default folder, membench-results
def test_a_session_refuses_a_run_that_writes_outside_its_results_folder(tmp_path: Path, monkeypatch, run: str):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["session", "--run", run, "--device", "cpu", "--train-time-limit", "1",
                                       "--to", "out/session.tgz"])
    assert result.exit_code == 1 and "must write under the results folder results" in result.output
    assert exited_cleanly(result) and not (tmp_path / "out").exists()  # refused before --to's folder is made


def test_a_session_names_a_run_option_that_does_not_exist(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["session", "--run", "--model hopfield_hebb --bogus 1 --out results/x",
                                       "--device", "cpu", "--train-time-limit", "1", "--to", "session.tgz"])
    assert result.exit_code == 1 and "is not a `membench run` command line: " in result.output
    assert "--bogus" in result.output.split("command line: ")[1]  # click's own words name the option
    assert exited_cleanly(result) and not (tmp_path / "session.tgz").exists()


def test_pack_and_session_refuse_a_results_folder_that_unpack_would_not_write_back_to(tmp_path: Path, monkeypatch):
    """Archive members are named results/...: packing results/x would unpack its runs into results/runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "mark").write_text("")
    packed = CliRunner().invoke(main, ["pack", "--to", "s.tgz", "--since", "mark", "--results", "results/x"])
    assert packed.exit_code == 1 and "--results results/x is not a checkout's results/ folder" in packed.output
    session = CliRunner().invoke(main, ["session", "--run", "--model hopfield_hebb --out results/x/t", "--results",
                                        "results/x", "--device", "cpu", "--train-time-limit", "1", "--to", "s.tgz"])
    assert session.exit_code == 1 and "--results results/x is not a checkout's results/ folder" in session.output
    assert exited_cleanly(packed) and exited_cleanly(session) and not (tmp_path / "s.tgz").exists()
    assert not list((tmp_path / "results" / "x").iterdir())
    nested = CliRunner().invoke(main, ["pack", "--to", "new/s.tgz", "--since", "mark", "--results", "results/x"])
    assert nested.exit_code == 1 and not (tmp_path / "new").exists()  # refused before --to's folder is made


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_session_on_cuda_without_a_cuda_device_is_refused_before_it_touches_its_archive(tmp_path: Path, monkeypatch):
    """--device cuda where torch sees none: one line before any run, the archive of an earlier session kept as it was
    and no cache made."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "session.tgz").write_bytes(b"an earlier session's archive")
    result = CliRunner().invoke(main, ["session", "--run", "--model hopfield_hebb --out results/x", "--device", "cuda",
                                       "--train-time-limit", "1", "--to", "session.tgz", "--cache", "cache"])
    assert result.exit_code == 1 and "--device cuda was asked for but torch sees no CUDA device" in result.output
    assert exited_cleanly(result) and (tmp_path / "session.tgz").read_bytes() == b"an earlier session's archive"
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "results").iterdir())


@pytest.mark.parametrize("flag", ["--device cuda", "--train-time-limit=1000", "--checkpoint-dir mine"])
def test_a_session_refuses_a_run_that_sets_what_the_session_gives_it(tmp_path: Path, monkeypatch, flag: str):
    """The session appends its device, time and cache to every --run; the run's own, silently overridden (and
    shown beside the session's in the record's command), is refused."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["session", "--run", f"--model hopfield_hebb {flag} --out results/x",
                                       "--device", "cpu", "--train-time-limit", "1", "--to", "session.tgz"])
    assert result.exit_code == 1 and f"{flag.split()[0].split('=')[0]} is the session's own" in result.output
    assert exited_cleanly(result) and not (tmp_path / "session.tgz").exists() and not (tmp_path / "results").exists()


def test_unpack_warns_when_it_ships_into_a_checkout_this_membench_does_not_read(tmp_path: Path, monkeypatch):
    """A worktree unpacked with membench installed from the main checkout: the checkpoints land in the worktree
    (as asked) while runs look in the main checkout's, so it says so; unpacking into the checkout membench reads
    from says nothing."""
    buffer = io.BytesIO()
    torch.save(_checkpoint(torch.ones(2), 3), buffer)
    archive = _archive(tmp_path / "a.tgz", {"checkpoints/tiny-quick-0123456789ab.pt": buffer.getvalue()})
    for name in ("worktree", "main"):
        (tmp_path / name / "results").mkdir(parents=True)
    monkeypatch.setattr(checkpoints, "SHIPPED_CHECKPOINTS", tmp_path / "main" / "results" / "checkpoints")
    result = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(tmp_path / "worktree")])
    assert result.exit_code == 0 and (tmp_path / "worktree" / "results" / "checkpoints" / "tiny-quick-0123456789ab.pt"
                                      ).is_file(), result.output
    assert f"but this membench (imported from {(tmp_path / 'main').resolve()})" in result.output
    assert f"PYTHONPATH={tmp_path / 'worktree'}" in result.output
    monkeypatch.chdir(tmp_path / "main")  # the checkout membench reads from, named relatively
    result = CliRunner().invoke(main, ["unpack", str(archive), "--root", "."])
    assert result.exit_code == 0 and "shipped" in result.output and "Warning" not in result.output, result.output


def test_unpack_skips_folders_and_refuses_files_for_results_checkpoints(tmp_path: Path):
    """Folder entries (as plain `tar` writes them) are fine; a file aimed at results/checkpoints would pass
    by the keep-the-further-trained rule, so it is refused."""
    root = tmp_path / "here"
    (root / "results").mkdir(parents=True)
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("results/table1")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("results/table1/table1.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    assert CliRunner().invoke(main, ["unpack", str(archive), "--root", str(root)]).exit_code == 0
    assert (root / "results" / "table1" / "table1.md").read_text() == "ok"
    bad = _archive(tmp_path / "bad.tgz", {"results/checkpoints/ebmm-gpu-0.pt": b"x"})
    result = CliRunner().invoke(main, ["unpack", str(bad), "--root", str(root)])
    assert result.exit_code == 1 and "member 'results/checkpoints/ebmm-gpu-0.pt'" in result.output


def test_unpack_names_an_unreadable_checkpoint_by_its_archive_member_and_ships_nothing(tmp_path: Path):
    root = tmp_path / "here"
    (root / "results").mkdir(parents=True)
    junk = _archive(tmp_path / "junk.tgz", {"checkpoints/ebmm-quick-0123456789ab.pt": b"junk"})
    result = CliRunner().invoke(main, ["unpack", str(junk), "--root", str(root)])
    assert result.exit_code == 1, result.output  # the rest unpacked, but the unpack did not do all it was given
    assert f"{junk}: its checkpoints/ebmm-quick-0123456789ab.pt is not a readable checkpoint" in result.output
    assert f"1 checkpoint(s) not shipped, unreadable ({junk}: checkpoints/ebmm-quick-0123456789ab.pt)" in result.output
    assert exited_cleanly(result)
    assert "left as it is" not in result.output  # no scratch path named for the user to delete
    assert not (root / "results" / "checkpoints").exists() or not list((root / "results" / "checkpoints").iterdir())


def test_pack_splits_into_volumes_a_lent_machine_returns_and_leaves_out_what_fits_nowhere(tmp_path: Path,
                                                                                         monkeypatch, capsys):
    """Weights barely compress: checkpoints go into volumes of at most CARRY_LIMIT_MB (smallest first), at
    most MAX_VOLUMES; one larger than a volume is left out (warned); unpacking every volume ships them all."""
    from membench import packing

    monkeypatch.setattr(packing, "CARRY_LIMIT_MB", 0.1)  # 100 kB volumes (less 64 kB of headroom: 38 kB)
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(_checkpoint(torch.rand(20_000), step=3), cache / "large.pt")  # 80 kB: fits no volume
    for name in ("a", "b"):  # 24 kB each: one a volume
        torch.save(_checkpoint(torch.rand(6_000), step=3), cache / f"{name}.pt")
    names = packing.pack(tmp_path / "s.tgz", 0.0, tmp_path / "results", cache)
    assert sorted(names) == ["checkpoints/a.pt", "checkpoints/b.pt"] and "large.pt" in capsys.readouterr().err
    volumes = [tmp_path / "s.tgz", tmp_path / "s-2.tgz"]
    assert all(v.exists() for v in volumes) and not (tmp_path / "s-3.tgz").exists()
    assert [packing.volume_label(v) for v in volumes] == [(1, 2), (2, 2)]
    (tmp_path / "here" / "results").mkdir(parents=True)
    carried = tmp_path / "carried"  # the first volume alone came back (the second left out of the machine's reply)
    carried.mkdir()
    (carried / "s.tgz").write_bytes(volumes[0].read_bytes())
    lost = CliRunner().invoke(main, ["unpack", str(carried / "s.tgz"), "--root", str(tmp_path / "here")])
    assert lost.exit_code == 1 and exited_cleanly(lost), lost.output
    assert f"is the first of 2 volumes, and {carried / 's-2.tgz'} is not here" in lost.output
    assert "nothing was unpacked" in lost.output and not (tmp_path / "here" / "results" / "checkpoints").exists()
    result = CliRunner().invoke(main, ["unpack", *map(str, volumes), "--root", str(tmp_path / "here")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "here" / "results" / "checkpoints").glob("*.pt")) == ["a.pt", "b.pt"]
    (cache / "b.pt").unlink()  # the next pack to the same name needs one volume: no stale second volume stays
    assert packing.pack(tmp_path / "s.tgz", 0.0, tmp_path / "results", cache) == ["checkpoints/a.pt"]
    assert not (tmp_path / "s-2.tgz").exists()


def test_pack_carries_optimiser_states_only_where_room_remains(tmp_path: Path, monkeypatch, capsys):
    """Every checkpoint goes in weights only first (a finished one is never pushed out); then unfinished ones
    take their AdamW state, smallest first, while a volume has room for it (one without room is named)."""
    from membench import packing

    monkeypatch.setattr(packing, "CARRY_LIMIT_MB", 0.27)  # one volume of 283 kB less 64 kB of headroom: 217 kB
    monkeypatch.setattr(packing, "MAX_VOLUMES", 1)
    cache = tmp_path / "cache"
    cache.mkdir()

    def unfinished(size: int) -> dict:
        weights = torch.rand(size)
        return {**_checkpoint(weights, step=3), "config": {"steps": 10},
                "optimizer": {"state": {0: {"exp_avg": torch.rand(size), "exp_avg_sq": torch.rand(size)}},
                              "param_groups": [{"params": [0], "lr": 0.1}]}}

    for name in ("a", "b"):  # 24 kB of weights (and 5 kB of generator state), 72 kB with AdamW's state
        torch.save(unfinished(6_000), cache / f"{name}.pt")
    torch.save(_checkpoint(torch.rand(20_000), step=10) | {"config": {"steps": 10}}, cache / "done.pt")  # 80 kB
    names = packing.pack(tmp_path / "s.tgz", 0.0, tmp_path / "results", cache)
    assert sorted(names) == ["checkpoints/a.pt", "checkpoints/b.pt", "checkpoints/done.pt"]
    with tarfile.open(tmp_path / "s.tgz") as tar:
        packed = {m.name: torch.load(tar.extractfile(m), weights_only=True) for m in tar.getmembers()}
    assert sorted("optimizer" in c for c in packed.values()) == [False, False, True]  # room for one state only
    assert "optimizer" not in packed["checkpoints/done.pt"]
    without = next(name for name, c in packed.items() if name != "checkpoints/done.pt" and "optimizer" not in c)
    assert f"{without} travels in {tmp_path / 's.tgz'} as weights only: no volume has room for its AdamW state" in (
        capsys.readouterr().err)
    monkeypatch.setattr(packing, "MAX_VOLUMES", 2)  # a second volume may open for a state the first has no room for
    names = packing.pack(tmp_path / "s.tgz", 0.0, tmp_path / "results", cache)
    packed = {}
    for volume in (tmp_path / "s.tgz", tmp_path / "s-2.tgz"):
        with tarfile.open(volume) as tar:
            packed |= {m.name: torch.load(tar.extractfile(m), weights_only=True) for m in tar.getmembers()}
    assert {name: "optimizer" in c for name, c in packed.items()} == {
        "checkpoints/a.pt": True, "checkpoints/b.pt": True, "checkpoints/done.pt": False}


def test_unpack_keeps_a_record_with_more_queries_than_the_archives(tmp_path: Path):
    """A record arriving in an archive replaces the one here only when it is at least as good (cells.distinct's
    rule: finished training before a paused checkpoint's, then more queries, then the later finish)."""
    from membench.records import read_record
    from membench.store import write_json_atomic

    root = tmp_path / "here"
    run = "results/table1/runs/hebb-N16-s0.json"
    record = {"run_id": "hebb", "suite": "table1", "model": "hopfield_hebb", "task": {"kind": "binary",
              "num_patterns": 1, "dim": 128, "erased": 64}, "budget": 8256, "seed": 0, "queries": 3, "preset": "quick", "options": {},
              "memory_floats": 8256, "environment": {"device": "cpu"}, "command": "membench run",
              "wall_time_s": 1.0, "finished_at": "2026-12-01T00:00:00Z", "training": None}
    write_json_atomic(root / run, {**record, "errors": [1.0, 0.0, 2.0]})
    fewer = {**record, "errors": [5.0], "finished_at": "2026-12-02T00:00:00Z"}
    more = {**record, "errors": [5.0, 5.0, 5.0, 5.0]}
    for arriving, kept in ((fewer, [1.0, 0.0, 2.0]), (more, [5.0, 5.0, 5.0, 5.0])):
        archive = _archive(tmp_path / "a.tgz", {run: json.dumps(arriving).encode()})
        result = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(root)])
        assert result.exit_code == 0 and read_record(root / run)["errors"] == kept, result.output
        assert ("hebb-N16-s0.json kept over the archive's" in result.output) == (arriving is fewer)
        assert ("it holds more queries" in result.output) == (arriving is fewer)
    training = {"checkpoint_key": "k", "curve": "training/k.csv", "config": {"steps": 6}, "train_time_s": 1.0}
    write_json_atomic(root / run, {**record, "errors": [1.0], "training": {**training, "steps": 6, "finished": True}})
    paused = {**more, "training": {**training, "steps": 2, "finished": False}}  # more queries, but a paused model
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "p.tgz", {run: json.dumps(paused).encode()})),
                                       "--root", str(root)])
    assert result.exit_code == 0 and read_record(root / run)["errors"] == [1.0], result.output
    assert "its model's training finished, the other's checkpoint was paused" in result.output
    broken = _archive(tmp_path / "b.tgz", {"results/table1/table1.md": b"new", run: json.dumps({**more, "seed": "0"})
                                           .encode()})
    result = CliRunner().invoke(main, ["unpack", str(broken), "--root", str(root)])
    assert result.exit_code == 1 and f"member {run} is not a membench record (seed" in result.output, result.output
    assert not (root / "results" / "table1" / "table1.md").exists()  # nothing unpacked


def test_a_session_times_updates_first_and_packs_their_rows(tmp_path: Path, monkeypatch):
    """--time ARGS runs `membench throughput ARGS` on the session's device into the results folder's table,
    which travels in the archive; ARGS that throughput would refuse stop the session before anything runs."""
    monkeypatch.chdir(tmp_path)
    session = ["session", "--run", "--model hopfield_hebb --num-patterns 8 --queries 16 --out results/table1",
               "--device", "cpu", "--time-cap", "100000", "--train-time-limit", "300", "--to", "out/session.tgz",
               "--cache", "session"]  # (the timing's cap far off: nothing here depends on it)
    for args, named in [("--model memory_networks --bogus 1", "--bogus"), ("--model memry_networks", "memry_networks"),
                        ("--suite table1-classical", "table1-classical"), ("--option 'hidden=2", "quotation")]:
        bad = CliRunner().invoke(main, [*session, "--time", args])
        assert bad.exit_code == 1 and named in bad.output, bad.output
        assert exited_cleanly(bad) and not (tmp_path / "out").exists()
    timing = "--model memory_networks --num-patterns 8 --batch-sizes 1 --steps 1 --warmup 1"
    no_time = [*session[:-6], "--train-time-limit", "0", *session[-4:]]  # the timing is skipped: paused, not failed
    skipped = CliRunner().invoke(main, [*no_time, "--time", timing])
    assert skipped.exit_code == EXIT_PAUSED and "== skipped membench throughput" in skipped.output, skipped.output
    result = CliRunner().invoke(main, [*session, "--time", timing])
    assert result.exit_code == 0 and f"== membench throughput {timing}" in result.output, result.output
    with tarfile.open(tmp_path / "out" / "session.tgz") as tar:
        rows = pd.read_csv(tar.extractfile("results/bench/throughput.csv"))
    assert rows[["model", "device", "batch_size", "num_patterns"]].values.tolist() == [["memory_networks", "cpu", 1, 8]]


def test_runs_stopped_at_the_grace_end_make_the_session_paused_and_share_the_cores(tmp_path: Path, monkeypatch):
    """A run interrupted while still evaluating at the grace's end (exit 130) checkpointed and wrote no record:
    the session says "paused" (3), not failed; its processes split the CPU's cores between them."""
    started = []

    class Process:
        def __init__(self, command, env=None, **kwargs):
            started.append(env)

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("membench.session.subprocess.Popen", Process)
    monkeypatch.setattr("membench.session.finish", lambda processes, deadline: [EXIT_INTERRUPTED] * len(processes))
    monkeypatch.setattr("membench.session.pack", lambda *args: None)
    monkeypatch.setattr("membench.session.os.cpu_count", lambda: 16)
    status = run_session(["--model raw_slots --out results/table1"], copies=2, train_time_limit_s=10, device="cpu",
                         cache=tmp_path / "cache", archive=tmp_path / "s.tgz", results_dir=Path("results"))
    assert status == EXIT_PAUSED
    assert [env["OMP_NUM_THREADS"] for env in started] == ["8", "8"]


def test_at_the_deadline_every_running_process_is_interrupted_and_the_deaf_one_killed(capsys):
    """A session's processes still running at its deadline all get SIGINT at once (one that checkpoints and
    exits on it ends with its own status), one that ignores it is killed after the wait (named, and counted
    as interrupted: stopped for the time, so the session is paused, not failed), and one that had finished
    keeps its status: the session ends in time to pack."""
    ready = "print('ready', flush=True)\ntime.sleep(60)"  # said once the handler is in place
    handler = f"import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(3))\n{ready}"
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                 for code in ("pass", handler, handler)]
    assert processes[0].wait() == 0 and all(p.stdout.readline() == "ready\n" for p in processes[1:])

    class Deaf:  # ignores SIGINT: its wait always runs out (no real wait, so no timing), until it is killed
        args, pid, returncode, signals = ["deaf", "SIG_IGN"], -1, None, []

        def poll(self):
            return self.returncode

        def send_signal(self, signum):
            self.signals.append(signum)

        def wait(self, timeout=None):
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            return self.returncode

        def kill(self):
            self.returncode = -signal.SIGKILL

    deaf = Deaf()
    statuses = finish([*processes, deaf], deadline=time.monotonic() + 0.5, interrupt_wait_s=600)
    assert statuses == [0, 3, 3, EXIT_INTERRUPTED] and deaf.signals == [signal.SIGINT]
    assert "SIG_IGN" in capsys.readouterr().err.split("killed ")[1].split(": it did not stop within 600 s")[0]
    for process in processes:
        process.stdout.close()


def _checkpointing_child(count: Path, seconds: float) -> subprocess.Popen:
    """A stand-in for a session's run, in a session of its own: on its first SIGINT it "checkpoints" for
    `seconds` and exits 3 (paused); it writes how many SIGINTs it got to `count`."""
    handler = (f"import signal, sys, time, pathlib\nseen = []\n"
               f"def got(*a):\n    seen.append(1)\n    pathlib.Path({str(count)!r}).write_text(str(len(seen)))\n"
               f"signal.signal(signal.SIGINT, got)\nprint('ready', flush=True)\n"
               f"while not seen: time.sleep(0.05)\ntime.sleep({seconds})\nsys.exit(3)")
    process = subprocess.Popen([sys.executable, "-c", handler], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline() == "ready\n"
    return process


def test_an_interrupted_session_interrupts_each_of_its_processes_once_then_stops(tmp_path: Path):
    """SIGTERM (or Ctrl-C) reaching the session while it waits: every process it started (each in a session of
    its own, so the terminal's Ctrl-C does not reach it too) gets one SIGINT, and checkpoints on it, before the
    session stops; a second SIGINT would stop a run's training before its checkpoint."""
    count = tmp_path / "interrupts"
    process = _checkpointing_child(count, 0.5)
    waits = []
    wait = process.wait

    def interrupted_once(timeout=None):  # Ctrl-C (or friendly_errors' SIGTERM) arriving in the session's wait
        waits.append(timeout)
        if len(waits) == 1:
            raise KeyboardInterrupt
        return wait(timeout=timeout)

    signals, send_signal = [], process.send_signal

    def sending(signum):  # every signal the session sends, counted here (the child counts what it got)
        signals.append(signum)
        send_signal(signum)

    process.wait, process.send_signal = interrupted_once, sending
    with pytest.raises(KeyboardInterrupt):
        finish([process], deadline=time.monotonic() + 60, interrupt_wait_s=10)
    assert process.returncode == 3 and count.read_text() == "1" and signals == [signal.SIGINT]
    process.stdout.close()


def test_an_interrupt_while_the_processes_checkpoint_neither_cuts_them_short_nor_reaches_them_twice(tmp_path: Path):
    """The outer `timeout -s INT` arriving while a session waits for its interrupted processes to checkpoint (the
    grace over): the wait goes on until they exit, KeyboardInterrupt after; `finish` called again (as
    run_session's interrupted path does) sends them no second SIGINT, which would stop training before its
    checkpoint."""
    count = tmp_path / "interrupts"
    process = _checkpointing_child(count, 1.0)
    waits, wait = [], process.wait

    def interrupted_in_the_stop(timeout=None):  # the first wait is the deadline's, the second the stop's
        waits.append(timeout)
        if len(waits) == 2:
            raise KeyboardInterrupt
        return wait(timeout=timeout)

    signals, send_signal = [], process.send_signal

    def sending(signum):
        signals.append(signum)
        send_signal(signum)

    process.wait, process.send_signal = interrupted_in_the_stop, sending
    with pytest.raises(KeyboardInterrupt):
        try:
            finish([process], deadline=time.monotonic() + 0.2, interrupt_wait_s=10)
        except KeyboardInterrupt:
            finish([process], deadline=time.monotonic())
            raise
    assert process.returncode == 3 and count.read_text() == "1" and signals == [signal.SIGINT]
    process.stdout.close()


def test_packing_holds_interrupts_until_it_is_done():
    """A Ctrl-C or SIGTERM while the session packs is noted, not raised: the archive is written whole first."""
    from membench.session import _interrupts_held

    before = signal.getsignal(signal.SIGINT)
    with _interrupts_held() as arrived:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert arrived == [signal.SIGTERM, signal.SIGINT] and signal.getsignal(signal.SIGINT) is before


def test_unpack_checks_every_archive_before_writing_any(tmp_path: Path):
    """`membench unpack good.tgz bad.tgz`: the bad one's record is refused before the good one is written."""
    root = tmp_path / "here"
    (root / "results").mkdir(parents=True)
    good = _archive(tmp_path / "good.tgz", {"results/table1/table1.md": b"new"})
    bad = _archive(tmp_path / "bad.tgz", {"results/table1/runs/x.json": b'{"run_id": "x"}'})
    result = CliRunner().invoke(main, ["unpack", str(good), str(bad), "--root", str(root)])
    assert result.exit_code == 1 and "member results/table1/runs/x.json is not a membench record" in result.output
    assert "nothing was unpacked" in result.output and not (root / "results" / "table1").exists()


def test_unpack_refuses_a_root_that_is_not_a_checkout(tmp_path: Path):
    """A mistyped --root is refused by name before anything is written, not created and filled."""
    archive = _archive(tmp_path / "good.tgz", {"results/table1/table1.md": b"new"})
    result = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(tmp_path / "typo")])
    assert result.exit_code == 1 and f"{tmp_path / 'typo'} is not a membench checkout" in result.output
    assert exited_cleanly(result) and not (tmp_path / "typo").exists()


def test_set_aside_leaves_a_session_its_records_and_unfinished_checkpoints_and_git_restores_the_rest(tmp_path):
    """`membench set-aside --keep results/fig3` deletes what a lent machine's session does not need: other results
    folders and finished checkpoints whose records cover every N they were trained on that their suite evaluates
    (a Figure 3 checkpoint grown through N = 2 ... 64: its record at 64); it keeps results/bench, the kept folder,
    unfinished checkpoints, those without records, those evaluated at some of their N only and the paper's
    numbers; `git checkout -- results` restores everything. A tree with changes git does not hold under results/
    (which checkout could not restore) or a --keep outside results/ is refused, a set-aside tree told to be
    restored first, and a root without results/ named; without --keep (a session writing a new folder) only
    results/bench and the paper's numbers stay."""
    root = Path(__file__).resolve().parent.parent
    learned = [f"table1-learned-ebmm-N{n}-s0-{run}.json" for n, run in ((16, "da6a44d483"), (32, "8598470d06"),
               (48, "0c040aa752"), (64, "be77139c8d"), (96, "1f35cff22a"))]  # the quick preset's: N = 16 ... 96
    files = {f"results/table1/runs/{name}": (root / "results" / "table1" / "runs" / name).read_bytes()
             for name in learned[:4]}  # evaluated at N = 16 ... 64 so far
    grown = "results/fig3-smoke/runs/fig3-cifar-ebmm-N64-s0-082c493a9a.json"  # a Figure 3 record, N = 64
    files[grown] = (root / grown).read_bytes()
    files |= {"results/fig3/fig3.md": b"kept", "results/bench/throughput.csv": b"kept", "results/capacity/c.md": b"c",
              "results/reference/paper_table1.csv": b"kept"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    ck = tmp_path / "results" / "checkpoints"
    ck.mkdir()
    shipped = f"{json.loads(files[f'results/table1/runs/{learned[0]}'])['training']['checkpoint_key']}.pt"
    (ck / shipped).write_bytes((root / "results/checkpoints" / shipped).read_bytes())
    base = {"model": {}, "generator": torch.Generator().get_state(), "elapsed_s": 1.0, "curve": [], "config": {"steps": 10}}
    torch.save({**base, "step": 5}, ck / "paused-key.pt")  # unfinished: the session resumes it
    torch.save({**base, "step": 10}, ck / "unrecorded-key.pt")  # finished, evaluation not recorded yet
    curriculum = {**base, "step": 10, "config": {"steps": 10, "num_patterns": [2, 8, 32, 64]}}
    torch.save(curriculum, ck / f"{json.loads(files[grown])['training']['checkpoint_key']}.pt")  # done: N = 64
    git = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def commit():
        for command in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r"]):
            subprocess.run(["git", *command], cwd=tmp_path, env=git, check=True)

    def left() -> list[str]:
        return sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").rglob("*") if p.is_file())

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=git, check=True)
    commit()
    before = left()
    outside = CliRunner().invoke(main, ["set-aside", "--keep", "fig3", "--root", str(tmp_path)])
    assert outside.exit_code == 1 and "--keep fig3: not a folder under" in outside.output, outside.output
    typo = CliRunner().invoke(main, ["set-aside", "--keep", "results/fg3", "--root", str(tmp_path)])
    assert typo.exit_code == 1 and "--keep results/fg3: not a folder under" in typo.output and left() == before
    climbs = CliRunner().invoke(main, ["set-aside", "--keep", "results/..", "--root", str(tmp_path)])
    assert climbs.exit_code == 1 and "--keep results/..: not a folder under" in climbs.output and left() == before
    result = CliRunner().invoke(main, ["set-aside", "--keep", "results/../results/fig3/", "--root", str(tmp_path)])
    assert result.exit_code == 0 and "set aside 7 file(s)" in result.output, result.output  # the path as written
    kept = ["results/bench/throughput.csv", "results/checkpoints/paused-key.pt", "results/checkpoints/unrecorded-key.pt",
            "results/fig3/fig3.md", "results/reference/paper_table1.csv"]
    assert left() == sorted([*kept, f"results/checkpoints/{shipped}"])  # N = 96 still to evaluate
    again = CliRunner().invoke(main, ["set-aside", "--keep", "results/fig3", "--root", str(tmp_path)])
    assert again.exit_code == 1 and "run `git checkout -- results` first" in again.output and exited_cleanly(again)
    assert "do not commit the deletions" in again.output and left() == sorted([*kept, f"results/checkpoints/{shipped}"])
    (tmp_path / "results/fig3/fig3.md").write_bytes(b"edited")  # a change beside the deletions: commit it first
    changed = CliRunner().invoke(main, ["set-aside", "--keep", "results/fig3", "--root", str(tmp_path)])
    assert changed.exit_code == 1 and "commit them first" in changed.output and exited_cleanly(changed)
    subprocess.run(["git", "checkout", "--", "results"], cwd=tmp_path, env=git, check=True)
    assert left() == before
    nowhere = CliRunner().invoke(main, ["set-aside", "--root", str(tmp_path / "results")])
    assert nowhere.exit_code == 1 and "has no results/ folder: give --root the membench checkout" in nowhere.output
    assert left() == before
    name = f"results/table1/runs/{learned[4]}"
    (tmp_path / name).write_bytes((root / name).read_bytes())  # every N evaluated: its checkpoint is done
    commit()
    result = CliRunner().invoke(main, ["set-aside", "--keep", str(tmp_path / "results/fig3"), "--root", str(tmp_path)])
    assert result.exit_code == 0 and left() == kept, result.output  # an absolute --keep into the checkout too
    subprocess.run(["git", "checkout", "--", "results"], cwd=tmp_path, env=git, check=True)
    result = CliRunner().invoke(main, ["set-aside", "--root", str(tmp_path)])
    assert result.exit_code == 0 and left() == [name for name in kept if not name.startswith("results/fig3/")]


def test_unpack_waits_for_the_set_aside_files_to_be_brought_back(tmp_path):
    """After a set-aside, `git checkout -- results` would undo what unpack writes into files git holds (a merged
    throughput table, a further-trained shipped checkpoint): unpack refuses while such files are deleted, and
    unpacks once they are back."""
    git = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    (tmp_path / "results" / "table1").mkdir(parents=True)
    (tmp_path / "results" / "table1" / "table1.md").write_text("held")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r"]):
        subprocess.run(["git", *command], cwd=tmp_path, env=git, check=True)
    (tmp_path / "results" / "table1" / "table1.md").unlink()  # as set-aside leaves it
    archive = _archive(tmp_path / "s.tgz", {"results/fig3/fig3.md": b"new"})
    refused = CliRunner().invoke(main, ["unpack", str(archive), "--root", str(tmp_path)])
    assert refused.exit_code == 1 and exited_cleanly(refused), refused.output
    assert ("1 file(s) git holds under" in refused.output and "results/table1/table1.md" in refused.output
            and "`git checkout -- results`), then unpack; nothing was unpacked" in refused.output)
    assert not (tmp_path / "results" / "fig3").exists()
    subprocess.run(["git", "checkout", "--", "results"], cwd=tmp_path, env=git, check=True)
    assert CliRunner().invoke(main, ["unpack", str(archive), "--root", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "results" / "fig3" / "fig3.md").read_bytes() == b"new"


def test_set_aside_refuses_a_results_folder_git_does_not_hold(tmp_path):
    """Without git, `git checkout -- results` could not bring anything back: nothing is deleted."""
    (tmp_path / "results" / "table1").mkdir(parents=True)
    (tmp_path / "results" / "table1" / "table1.md").write_text("kept")
    result = CliRunner().invoke(main, ["set-aside", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "is not a git checkout git can read" in result.output and exited_cleanly(result)
    assert (tmp_path / "results" / "table1" / "table1.md").read_text() == "kept"


def test_a_grown_checkpoint_is_done_at_the_n_its_suites_evaluate_and_at_every_n_where_a_suite_is_unknown(tmp_path):
    """A finished checkpoint trained through N = 2, 8, 32, 64: done with its record at 64 in a Figure 3 suite
    (it evaluates 64 only), not with a record of a suite this checkout does not know (every trained N is then
    needed), nor while unfinished."""
    base = {"model": {}, "generator": torch.Generator().get_state(), "elapsed_s": 1.0, "curve": []}
    config = {"steps": 10, "num_patterns": [2, 8, 32, 64, 64, 64]}
    torch.save({**base, "step": 10, "config": config}, tmp_path / "grown.pt")
    torch.save({**base, "step": 9, "config": config}, tmp_path / "paused.pt")
    evaluated = {"grown": {64}, "paused": {64}}
    assert done(tmp_path / "grown.pt", evaluated, {"grown": {"fig3-cifar"}})
    assert not done(tmp_path / "grown.pt", evaluated, {"grown": {"fig3-cifar", "someone-elses-suite"}})
    assert done(tmp_path / "grown.pt", {"grown": {2, 8, 32, 64}}, {"grown": {"someone-elses-suite"}})
    assert not done(tmp_path / "paused.pt", evaluated, {"paused": {"fig3-cifar"}})


def test_each_timing_command_is_cut_at_its_cap_not_at_the_sessions_end(tmp_path, monkeypatch):
    """A timing command (compiling can take minutes) gets --time-cap seconds, not the session's training time;
    the runs then start."""
    waits, now = [], 1000.0  # the session's clock stands still: the deadlines are exact

    def finish_now(processes, deadline):
        waits.append(deadline - now)
        return [0] * len(processes)

    monkeypatch.setattr("membench.session.time", SimpleNamespace(time=time.time, monotonic=lambda: now))
    monkeypatch.setattr("membench.session.subprocess.Popen", lambda *args, **kwargs: object())
    monkeypatch.setattr("membench.session.finish", finish_now)
    monkeypatch.setattr("membench.session.pack", lambda *args: None)
    status = run_session([], copies=1, train_time_limit_s=3600, device="cpu", cache=tmp_path / "cache",
                         archive=tmp_path / "s.tgz", results_dir=Path("results"), first=[["throughput"]] * 2,
                         first_cap_s=90)
    assert status == 0 and waits == [90.0, 90.0, 3600.0 + 120.0], waits  # then the runs: to the end, plus grace_s


def _record_using(key: str, digest: str, steps: int) -> dict:
    """A trained record evaluated with weights of digest `digest` from checkpoint `key` at `steps`."""
    return {"run_id": "m", "suite": "table1", "model": "m", "task": {"kind": "binary", "num_patterns": 1, "dim": 128,
            "erased": 64}, "budget": 8256, "seed": 0, "queries": 1, "preset": "gpu", "options": {},
            "memory_floats": 8256, "environment": {"device": "cpu"}, "command": "membench run", "wall_time_s": 1.0,
            "finished_at": "2026-12-01T00:00:00Z", "errors": [1.0],
            "training": {"checkpoint_key": key, "curve": f"training/{key}.csv", "config": {"steps": steps},
                         "steps": steps, "finished": True, "train_time_s": 1.0, "weights_digest": digest}}


def test_unpack_writes_no_record_whose_weights_are_not_those_shipped_nor_one_of_an_unreadable_checkpoint(
        tmp_path: Path):
    """Every record unpacked is backed by the weights results/checkpoints keeps under its key: one evaluated with
    other weights at the shipped step (the shipped ones stay), or whose checkpoint member is unreadable, is left
    out with its curve, the rest written; a checkpoint trained under another key than its name's stops the
    unpack; the session's tables beside runs/ are not written over the checkout's."""
    from membench.checkpoints import saved_bytes, weights_digest

    root = tmp_path / "here"
    key, run, curve = "m-gpu-0123456789ab", "results/table1/runs/m.json", "results/table1/training/m-gpu-0123456789ab.csv"
    shipped_path = root / "results" / "checkpoints" / f"{key}.pt"
    shipped_path.parent.mkdir(parents=True)
    shipped = _checkpoint(torch.zeros(3), step=100)
    torch.save(shipped, shipped_path)
    (root / "results" / "table1").mkdir()
    (root / "results" / "table1" / "table1.md").write_text("every model's table")
    other = _checkpoint(torch.ones(3), step=100)  # other weights at the same step
    members = {f"checkpoints/{key}.pt": saved_bytes(other), curve: b"step,loss,error\n1,2.0,3.0\n",
               run: json.dumps(_record_using(key, weights_digest(other["model"]), 100)).encode(),
               "results/table1/table1.md": b"the session's one row", "results/bench/notes.txt": b"kept"}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "a.tgz", members)), "--root", str(root)])
    assert result.exit_code == 0 and exited_cleanly(result), result.output
    assert "its record results/table1/runs/m.json is not written: it was evaluated with other weights" in result.output
    assert "trained as far, with other weights" in result.output
    assert not (root / run).exists() and not (root / curve).exists()
    assert torch.equal(torch.load(shipped_path, weights_only=False)["model"]["w"], torch.zeros(3))
    assert (root / "results" / "table1" / "table1.md").read_text() == "every model's table"
    assert "1 table and plot file(s) beside its runs/ folders not written" in result.output
    assert (root / "results" / "bench" / "notes.txt").read_bytes() == b"kept"
    same = json.dumps(_record_using(key, weights_digest(shipped["model"]), 100)).encode()  # the shipped weights
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "b.tgz", {**members, run: same})),
                                       "--root", str(root)])
    assert result.exit_code == 0 and (root / run).exists() and (root / curve).exists(), result.output
    (root / run).unlink()
    (root / curve).unlink()
    broken = {**members, f"checkpoints/{key}.pt": saved_bytes(_checkpoint(torch.ones(3), step=200))[:200]}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "c.tgz", broken)), "--root", str(root)])
    assert result.exit_code == 1 and exited_cleanly(result), result.output
    assert f"its checkpoint checkpoints/{key}.pt in {tmp_path / 'c.tgz'} is unreadable" in result.output
    assert not (root / run).exists() and not (root / curve).exists()
    foreign = {f"checkpoints/{key}.pt": saved_bytes({**_checkpoint(torch.ones(3), step=900), "key": "dnc-gpu-0"}),
               "results/bench/new.txt": b"new"}
    result = CliRunner().invoke(main, ["unpack", str(_archive(tmp_path / "d.tgz", foreign)), "--root", str(root)])
    assert result.exit_code == 1 and "is the checkpoint trained as dnc-gpu-0, another run's" in result.output
    assert "nothing was unpacked" in result.output and not (root / "results" / "bench" / "new.txt").exists()
    assert torch.load(shipped_path, weights_only=False)["step"] == 100


def test_a_checkpoint_trained_less_never_replaces_a_shipped_one(tmp_path: Path):
    """Shipping keeps the shipped checkpoint trained further, even one from before histories were kept (it used to
    be replaced by the arriving one, whatever its step, to give it a history)."""
    from membench.shipping import ship_checkpoints

    target, source = tmp_path / "shipped", tmp_path / "src"
    target.mkdir()
    source.mkdir()
    legacy = {k: v for k, v in _checkpoint(torch.zeros(3), step=9000).items() if k != "history"}
    torch.save(legacy, target / "m-quick-0123456789ab.pt")
    torch.save(_checkpoint(torch.ones(3), step=5000), source / "m-quick-0123456789ab.pt")
    assert ship_checkpoints(None, tmp_path / "cache", [source / "m-quick-0123456789ab.pt"], target=target) == []
    assert torch.load(target / "m-quick-0123456789ab.pt", weights_only=False)["step"] == 9000


def test_a_shipped_checkpoint_of_another_layout_replaces_the_cached_training_only_where_it_fits_the_model(
        tmp_path: Path, monkeypatch):
    """A shipped checkpoint trained further but of other weights' names or shapes than the cached one (a built-in
    model's code changed under the same key) is copied over the cache's training only for a model it fits and the
    cached one does not: otherwise the cache's would be set aside as not fitting and restarted at every rerun."""
    shipped_dir, cache = tmp_path / "shipped", tmp_path / "cache"
    shipped_dir.mkdir()
    cache.mkdir()
    monkeypatch.setattr(checkpoints, "SHIPPED_CHECKPOINTS", shipped_dir)
    torch.save(_checkpoint(torch.zeros(5), step=300), shipped_dir / "m-quick-0123456789ab.pt")
    torch.save(_checkpoint(torch.ones(3), step=118), cache / "m-quick-0123456789ab.pt")

    def model(size: int) -> torch.nn.Module:
        module = torch.nn.Module()
        module.w = torch.nn.Parameter(torch.zeros(size))
        return module

    for fitting in (None, model(3)):  # no model to judge by, or one the cache's fits: its training stays
        path = checkpoints.checkpoint_path("m-quick-0123456789ab", cache, fitting)
        assert torch.load(path, weights_only=False)["step"] == 118
    path = checkpoints.checkpoint_path("m-quick-0123456789ab", cache, model(5))  # the model's code changed
    assert torch.load(path, weights_only=False)["step"] == 300


def test_unpack_judges_a_record_by_the_checkpoint_another_volume_carries_and_checks_every_volume_first(
        tmp_path: Path):
    """A session's record in session.tgz, the checkpoint it trained further in session-2.tgz (pack fills volumes
    as they come): unpacked in the order the volumes are numbered, the record is judged against that checkpoint,
    not the one shipped before, and written. A checkpoint under another run's key in the second volume stops the
    unpack before the first is written."""
    from membench.checkpoints import saved_bytes, weights_digest

    root = tmp_path / "here"
    key, run = "m-gpu-0123456789ab", "results/table1/runs/m.json"
    shipped_path = root / "results" / "checkpoints" / f"{key}.pt"
    shipped_path.parent.mkdir(parents=True)
    torch.save(_checkpoint(torch.zeros(3), step=100), shipped_path)
    further = _checkpoint(torch.ones(3), step=200)
    first = _archive(tmp_path / "session.tgz", {run: json.dumps(_record_using(key, weights_digest(further["model"]),
                                                                                200)).encode()})
    second = _archive(tmp_path / "session-2.tgz", {f"checkpoints/{key}.pt": saved_bytes(further)})
    result = CliRunner().invoke(main, ["unpack", str(first), str(second), "--root", str(root)])
    assert result.exit_code == 0 and "not written" not in result.output, result.output
    assert (root / run).exists() and torch.load(shipped_path, weights_only=False)["step"] == 200
    (root / run).unlink()
    foreign = _archive(second, {f"checkpoints/{key}.pt": saved_bytes({**further, "step": 300, "key": "x-gpu-0"})})
    result = CliRunner().invoke(main, ["unpack", str(first), str(foreign), "--root", str(root)])
    assert result.exit_code == 1 and "is the checkpoint trained as x-gpu-0, another run's" in result.output
    assert "nothing was unpacked" in result.output and not (root / run).exists()


def test_a_sessions_processes_take_its_interrupt_even_when_it_was_started_with_sigint_ignored():
    """A session started in a shell script's background inherits SIGINT ignored; its processes get Ctrl-C's
    default action back (`default_interrupt`), so its deadline's interrupt stops them rather than its kill."""
    import subprocess
    import sys

    child = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    parent = ("import signal, subprocess, sys; from membench.session import default_interrupt; "
              "signal.signal(signal.SIGINT, signal.SIG_IGN); "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout.strip(), "
              f"subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, "
              "preexec_fn=default_interrupt).stdout.strip())")
    said = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout.split()
    assert said == ["False", "True"]  # inherited ignored; given back by the session's children
