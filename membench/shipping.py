"""Shipping checkpoints: writing the trained ones into results/checkpoints (`ship_checkpoints`, as
`checkpoints.portable` keeps them), and listing where every cached and shipped one stands (`standing`).

A shipped checkpoint is replaced only by one trained further; one whose records are in a results folder but
whose file is nowhere, or unreadable, is named (membench.checkpoints reads, loads and copies them).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from membench import checkpoints
from membench.checkpoints import (UNREADABLE, portable, read_checkpoint, readable_checkpoint, saved_bytes,
                                  weights_digest)
from membench.errors import MembenchError
from membench.store import ResultsStore, warn, write_atomic


KEY_PATTERN = re.compile(r"[\w.-]+-[\w.-]+-[0-9a-f]{12}")  # run_identity.checkpoint_key: <model>-<preset>-<digest>


def ship_checkpoints(out_dir: Path | None, checkpoint_dir: Path, files: Sequence[Path] = (),
                     target: Path | None = None, max_mb: float = 50.0) -> list[Path]:
    """Ship into `target` (default: checkpoints.SHIPPED_CHECKPOINTS), as `portable` (weights only once
    finished; an unfinished one with its optimiser state where small enough), the
    checkpoint of every trained record in `out_dir` (from the cache, else the one shipped earlier) and
    each of `files` (named <checkpoint key>.pt, e.g. paused GPU training carried back from its machine).

    A shipped checkpoint is replaced only by one trained further, or rewritten when it holds more or less
    than `portable` keeps (a finished one's optimiser state) or lacks a history; one from before histories were kept gets one stretch of
    training from the earliest record that used it (`from_record`). Checkpoints over `max_mb` are
    skipped with a warning. Returns the files written; MembenchError, after the others are shipped, naming
    every checkpoint none of whose files (the cache's, then the shipped one) can be read, else every record
    evaluated with other weights than the shipped ones (`weights_digest`), else every record whose checkpoint
    is in neither place."""
    target = Path(target or checkpoints.SHIPPED_CHECKPOINTS)
    sources: dict[str, tuple[list[Path], dict[str, Any] | None]] = {}  # key -> (files, earliest record using it)
    missing: dict[str, list[str]] = {}  # checkpoint key -> run ids of the records using it, in neither place
    records = ResultsStore(out_dir).records() if out_dir is not None else []
    for record in sorted(records, key=lambda r: r.get("finished_at", "")):
        key = (record.get("training") or {}).get("checkpoint_key")
        if key in missing:
            missing[key].append(record["run_id"])
        if not key or key in sources or key in missing:
            continue
        candidates = [path for path in (Path(checkpoint_dir) / f"{key}.pt", target / f"{key}.pt") if path.exists()]
        if candidates:
            sources[key] = (candidates, record)
        else:
            missing[key] = [record["run_id"]]
    for file in files:
        if not Path(file).is_file():
            raise MembenchError(f"no checkpoint file {file}; give the path of a <checkpoint key>.pt file")
        sources[Path(file).stem] = ([Path(file)], None)
    written: list[Path] = []
    unreadable: list[str] = []
    for key, (candidates, record) in sources.items():
        source, saved = _first_readable(candidates)
        if saved is None:
            unreadable += [str(path) for path in candidates]
        elif (path := _ship_one(source, saved, target / f"{key}.pt", record, max_mb)) is not None:
            written.append(path)
    if unreadable:
        raise MembenchError(f"{len(unreadable)} checkpoint file(s) unreadable, not shipped ({', '.join(unreadable)}); "
                            f"the others were shipped ({len(written)} written): delete each and rerun the command "
                            "that trained it")
    other = _other_weights(records, target)
    if other:
        raise MembenchError(f"{len(other)} record(s) of {out_dir} were evaluated with other weights than the shipped "
                            f"checkpoint of their key ({'; '.join(other[:3])}{'; ...' if len(other) > 3 else ''}); "
                            f"the others were shipped ({len(written)} written): evaluate them again from it (membench "
                            "run ... --no-train --force), or delete that shipped checkpoint and ship again")
    if missing:
        named = "; ".join(f"{key}.pt of {runs[0]}" + (f" and {len(runs) - 1} other record(s)" if len(runs) > 1 else "")
                          for key, runs in missing.items())
        raise MembenchError(f"{len(missing)} checkpoint(s) behind records of {out_dir} are neither in {checkpoint_dir} "
                            f"nor in {target} ({named}); the others were shipped ({len(written)} written): rerun "
                            "each record's command with --force to train it, or delete its records")
    return written


def _other_weights(records: list[dict[str, Any]], target: Path) -> list[str]:
    """'<run id> (<key>.pt)' of each record whose `weights_digest` is not that of the checkpoint shipped in
    `target` under its key (records without a digest, or whose key has no readable shipped file, pass, and so do
    a paused checkpoint's: a snapshot its training may have moved on from since, `--no-train` evaluates again)."""
    digests: dict[str, str | None] = {}
    other = []
    for record in records:
        training = record.get("training") or {}
        key, recorded = training.get("checkpoint_key"), training.get("weights_digest")
        if not key or recorded is None or training.get("finished") is False:
            continue
        if key not in digests:
            shipped = readable_checkpoint(target / f"{key}.pt")
            digests[key] = weights_digest(shipped["model"]) if shipped is not None else None
        if digests[key] not in (None, recorded):
            other.append(f"{record['run_id']} ({key}.pt)")
    return other


def _first_readable(paths: list[Path]) -> tuple[Path, dict[str, Any] | None]:
    """The first of `paths` that reads as a checkpoint and its contents (a warning for each before it that does
    not), or the last path and None."""
    for index, path in enumerate(paths):
        try:
            return path, read_checkpoint(path)
        except UNREADABLE as exc:
            if index + 1 < len(paths):
                warn(f"checkpoint {path} is unreadable ({type(exc).__name__}): left as it is; shipping from "
                     f"{paths[index + 1]} instead")
    return paths[-1], None


def keeps_shipped(shipped: dict[str, Any] | None, saved: dict[str, Any]) -> bool:
    """Whether the checkpoint `shipped` under a key stays over `saved`, one arriving under that key: it is trained
    further, or as far (the same weights, or other weights at the same step: the records made with the shipped
    ones stand)."""
    return shipped is not None and shipped["step"] >= saved["step"]


def _ship_one(source: Path, saved: dict[str, Any], dest: Path, record: dict[str, Any] | None,
              max_mb: float) -> Path | None:
    """Write `saved` (read from `source`) to `dest` as `portable`, unless the one there stays (`keeps_shipped`);
    that one is rewritten from `saved`, the same weights, only where it is not portable as it stands."""
    shipped = saved if dest.resolve() == source.resolve() else readable_checkpoint(dest)
    if saved.get("key", dest.stem) != dest.stem:
        warn(f"{source} is the checkpoint trained as {saved['key']}, another run's: not shipped as {dest.name}")
        return None
    if keeps_shipped(shipped, saved):
        same = weights_digest(shipped["model"]) == weights_digest(saved["model"])
        if not same or shipped["step"] > saved["step"]:
            warn(f"kept the shipped {dest.name} (step {shipped['step']}): {source} is "
                 + (f"not trained as far (step {saved['step']})" if shipped["step"] > saved["step"] else
                    "trained as far, with other weights; delete the shipped one first to ship it"))
            return None
        if ("optimizer" in shipped) == ("optimizer" in portable(shipped)) and shipped.get("history") is not None:
            return None  # the same weights, portable as they stand
    if saved.get("history") is None and record is not None:  # before `portable` sizes it
        env = record["environment"]
        saved = {**saved, "history": [{"steps": [0, saved["step"]], "train_time_s": round(saved["elapsed_s"], 2),
                                       "device": env["device"], "device_name": env.get("device_name"),
                                       "commit": env.get("git_commit"), "torch": env.get("torch"),
                                       "from_record": record["run_id"]}]}
    data = saved_bytes(portable(saved))
    if len(data) > max_mb * 2**20:
        warn(f"checkpoint {source} is {len(data) / 2**20:.0f} MB as shipped (see `portable`), over "
             f"{max_mb:g} MB: not shipped")
        return None
    return write_atomic(dest, lambda handle: handle.write(data))


def standing(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """Where every checkpoint in the cache (`checkpoint_dir`) and shipped in results/checkpoints stands, one row
    a file, keys in order, the cache's first (the shipped folder once, when it is the cache): where it is, its key,
    its size, its step of planned ('?' where its configuration names none), the devices that trained it (its
    history) and whether AdamW's state is kept; an unreadable one says why."""
    rows, seen = [], set()
    shipped_folder = checkpoints.SHIPPED_CHECKPOINTS.resolve()
    for place, folder in (("cache", Path(checkpoint_dir).resolve()), ("shipped", shipped_folder)):
        if folder in seen:
            continue
        seen.add(folder)
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            row = {"where": place, "key": path.stem, "MB": ""}
            try:
                row["MB"] = round(path.stat().st_size / 2**20, 1)
                saved = read_checkpoint(path)
            except UNREADABLE as exc:
                reason = " ".join(str(exc).split())[:80]
                rows.append({**row, "step": f"unreadable ({type(exc).__name__}{': ' + reason if reason else ''})"})
                continue
            planned = (saved.get("config") or {}).get("steps")
            step = (f"{saved['step']} of ?" if planned is None else f"{saved['step']} of {planned}"
                    if saved["step"] < planned else f"{saved['step']} (finished)")
            devices = sorted({s.get("device_name") or s.get("device", "?") for s in saved.get("history") or []})
            rows.append({**row, "step": step, "trained on": ", ".join(devices) or "unknown",
                         "optimiser": "optimizer" in saved})
    return rows
