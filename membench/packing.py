"""Packing what a lent machine's session made into the archive that carries it home (`membench.archive`
unpacks it here).

`pack` puts into one .tar.gz

    results/<...>        every file under the results folder written since the session began
                         (records, training curves, throughput rows), at its path in the repository;
                         a record that cannot be read is left out, named; of the throughput table
                         only the rows measured since then
    checkpoints/<key>.pt every checkpoint of the session's cache trained further than the one shipped
                         in results/checkpoints (`checkpoints.portable`)

in volumes of at most 16 MB, four at most (session.tgz, session-2.tgz, ...: what a lent machine returns), each
labelled with its number and the count (`volume_label`), so that a volume missing here is noticed.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from membench.archive import (CHECKPOINTS, RESULTS, THROUGHPUT_CSV, UNREADABLE_ARCHIVE, is_record,
                              unreadable_archive)
from membench.checkpoints import portable, readable_checkpoint, saved_bytes, weights_only
from membench.errors import MembenchError
from membench.records import parse_record
from membench.store import warn, write_atomic
from membench.throughput import rows_since

CARRY_LIMIT_MB = 16.0  # what a lent machine returns per file
MAX_VOLUMES = 4  # a lent machine returns at most 8 files of up to 16 MiB each, 64 MiB together: 4 full volumes
VOLUME_HEADER = "membench.volume"  # each volume's "number/count", a pax header (none in archives before it)


def volume_path(archive: Path, number: int) -> Path:
    """The archive's volume `number` (1: the archive itself; then <stem>-2.tgz, ...)."""
    archive = Path(archive)
    stem = archive.name.removesuffix(".tgz").removesuffix(".tar.gz")
    return archive if number == 1 else archive.with_name(f"{stem}-{number}.tgz")


def volume_label(archive: Path) -> tuple[int, int] | None:
    """(its number, how many volumes `pack` wrote) of an archive's volume, None for an archive packed before
    volumes were labelled; MembenchError for one that is not a readable archive."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            label = tar.pax_headers.get(VOLUME_HEADER)
    except UNREADABLE_ARCHIVE as exc:
        raise unreadable_archive(archive, exc) from None
    number, _, count = (label or "").partition("/")
    return (int(number), int(count)) if number.isdigit() and count.isdigit() else None


def pack(archive: Path, since: float, results_dir: Path, checkpoint_dir: Path) -> list[str]:
    """Write the files under `results_dir` modified since `since` (seconds since the epoch; results/checkpoints
    aside) and the checkpoints (*.pt) of `checkpoint_dir` modified since then and trained further than the one
    shipped in results_dir/checkpoints (`checkpoints.portable`: weights only once finished, smallest first) into
    `archive` (.tar.gz) and, where they do not fit in CARRY_LIMIT_MB, further volumes (`volume_path`), at most
    MAX_VOLUMES in all: what a lent machine returns. Unfinished checkpoints then take their AdamW state where a
    volume has room (or a further volume may open; one left without it is warned about). A checkpoint that fits
    nowhere is left out, warned, and so is a record or throughput table that cannot be read (`unpack` would refuse
    the whole archive for it); of the throughput table only the rows measured since `since` go (`rows_since`).
    Returns the member names."""
    results_dir, checkpoint_dir = Path(results_dir), Path(checkpoint_dir)
    members: dict[str, bytes] = {}
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if (path.is_file() and path.stat().st_mtime >= since and relative.parts[0] != CHECKPOINTS
                and not any(part.startswith(".") for part in relative.parts)):
            name, data = str(PurePosixPath(RESULTS, *relative.parts)), path.read_bytes()
            if name == THROUGHPUT_CSV:
                try:
                    if (data := rows_since(path, since)) is None:
                        continue  # (no row of its own: a file touched, say, by a merge of nothing new)
                except MembenchError as exc:  # unpack would refuse the whole archive for it
                    warn(f"{exc}; left out of {archive}")
                    continue
            if is_record(name):  # unpack refuses an archive with an unreadable record: it stays here, named
                try:
                    parse_record(data, str(path))
                except MembenchError as exc:
                    warn(f"{exc}; left out of {archive} (run its command again to make it)")
                    continue
            members[name] = data
    resumable: dict[str, bytes] = {}  # unfinished checkpoints with their optimiser state, where room remains
    for path in sorted(checkpoint_dir.glob("*.pt"), key=lambda p: p.stat().st_size):  # smallest first
        if path.stat().st_mtime < since or (saved := readable_checkpoint(path)) is None:
            continue
        shipped = results_dir / CHECKPOINTS / path.name
        if shipped.exists() and saved["step"] <= ((readable_checkpoint(shipped) or {}).get("step") or 0):
            continue  # only copied from the shipped one (used, not trained further)
        members[f"{CHECKPOINTS}/{path.name}"] = saved_bytes(weights_only(saved))
        if "optimizer" in (carried := portable(saved)):
            resumable[f"{CHECKPOINTS}/{path.name}"] = saved_bytes(carried)
    limit = CARRY_LIMIT_MB * 2**20 - 2**16  # tar and gzip headers; weights barely compress
    volumes: list[dict[str, bytes]] = [{}]
    for name, data in members.items():  # results files first: they are what a session is for
        fits = [v for v in volumes if sum(map(len, v.values())) + len(data) <= limit]
        if not fits and len(volumes) < MAX_VOLUMES and len(data) <= limit:
            volumes.append({})
            fits = volumes[-1:]
        if not fits:
            warn(f"{name} ({len(data) / 2**20:.1f} MB) left out of {archive}: {MAX_VOLUMES} volumes of "
                 f"{CARRY_LIMIT_MB:g} MB (what a lent machine returns) are full; its training is lost with the "
                 f"machine unless it finishes (and is evaluated) within one session")
            continue
        fits[0][name] = data
    for name, data in resumable.items():  # then AdamW's state for unfinished ones, smallest first, where it fits
        home = next((v for v in volumes if name in v), None)
        room = [v for v in volumes if sum(map(len, v.values())) - len(v.get(name, b"")) + len(data) <= limit]
        if home is not None and not room and len(volumes) < MAX_VOLUMES and len(data) <= limit:
            volumes.append({})  # a volume of its own rather than a fresh optimiser on the next machine
            room = volumes[-1:]
        if home is not None and room:
            del home[name]
            room[0][name] = data
        elif home is not None:
            warn(f"{name} travels in {archive} as weights only: no volume has room for its AdamW state "
                 f"({len(data) / 2**20:.1f} MB with it), so the next machine resumes it with a fresh optimiser")

    def writer(volume: dict[str, bytes], label: str):
        def write(handle) -> None:
            with tarfile.open(fileobj=handle, mode="w:gz", format=tarfile.PAX_FORMAT,
                              pax_headers={VOLUME_HEADER: label}) as tar:
                for name, data in volume.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return write

    for number, volume in enumerate(volumes, start=1):
        write_atomic(volume_path(archive, number), writer(volume, f"{number}/{len(volumes)}"))
    for number in range(len(volumes) + 1, MAX_VOLUMES + 1):  # an earlier, larger pack's volumes would unpack too
        volume_path(archive, number).unlink(missing_ok=True)
    return [name for volume in volumes for name in volume]
