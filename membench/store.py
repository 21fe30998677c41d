"""Results store: one JSON record per finished run, written atomically.

Layout of an output directory:
    runs/<run_id>.json        raw record of one run (per-query errors + metadata)
    training/<key>.csv        training curve of each meta-trained model
A record appears only when its run has finished (written to a temporary file and
renamed), so a killed run leaves nothing behind and a rerun skips finished runs.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that `path` either keeps its old content or has the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write text so that `path` either keeps its old content or has the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultsStore:
    """Reads and writes the run records under one output directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.training_dir = self.root / "training"

    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def has(self, run_id: str) -> bool:
        return self.record_path(run_id).exists()

    def save(self, record: dict[str, Any]) -> Path:
        path = self.record_path(record["run_id"])
        write_json_atomic(path, record)
        return path

    def records(self) -> list[dict[str, Any]]:
        """All finished records, sorted by run id."""
        if not self.runs_dir.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.runs_dir.glob("*.json"))]
