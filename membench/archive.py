"""The archive that carries a lent machine's session home: `pack` there, `unpack` here.

`pack` puts what a session made into one .tar.gz

    results/<...>        every file under the results folder written since the session began
                         (records, training curves, throughput rows), at its path in the repository;
                         a record that cannot be read is left out, named
    checkpoints/<key>.pt every checkpoint of the session's cache trained further than the one shipped
                         in results/checkpoints (`checkpoints.portable`)

in volumes of at most 16 MB, four at most (session.tgz, session-2.tgz, ...: what a lent machine returns).

Here, `unpack` checks every member before writing anything (plain files under those two folders,
no absolute or parent paths, nothing into results/checkpoints), writes the results files into the
checkout (the throughput table's rows merged into the local one) and ships the checkpoints into its
results/checkpoints (`shipping.ship_checkpoints`: a shipped one is replaced only by one trained
further), so the next session's same command resumes from them.
"""
from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from membench.checkpoints import (UNREADABLE, portable, read_checkpoint, readable_checkpoint, saved_bytes,
                                  weights_digest, weights_only)
from membench.errors import MembenchError
from membench.shipping import keeps_shipped, ship_checkpoints
from membench.records import better_because, completeness, parse_record, read_record
from membench.store import warn, write_atomic

RESULTS, CHECKPOINTS = "results", "checkpoints"
CARRY_LIMIT_MB = 16.0  # what a lent machine returns per file
MAX_VOLUMES = 4  # a lent machine returns at most 8 files of up to 16 MiB each, 64 MiB together: 4 full volumes
THROUGHPUT_CSV = "results/bench/throughput.csv"  # merged row by row on unpacking
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
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise MembenchError(f"{archive} is not a readable session archive ({type(exc).__name__}: {exc}); carry it "
                            "back again or run `membench pack` on the machine that made it") from None
    number, _, count = (label or "").partition("/")
    return (int(number), int(count)) if number.isdigit() and count.isdigit() else None


def pack(archive: Path, since: float, results_dir: Path, checkpoint_dir: Path) -> list[str]:
    """Write the files under `results_dir` modified since `since` (seconds since the epoch; results/checkpoints
    aside) and the checkpoints (*.pt) of `checkpoint_dir` modified since then and trained further than the one
    shipped in results_dir/checkpoints (`checkpoints.portable`: weights only once finished, smallest first) into `archive` (.tar.gz) and, where they
    do not fit in CARRY_LIMIT_MB, further volumes (`volume_path`), at most MAX_VOLUMES in all: what a lent
    machine returns. Unfinished checkpoints then take their AdamW state where a volume has room (or a further
    volume may open). A checkpoint that fits nowhere is left out, warned, and so is a record that cannot be read
    (`unpack` would refuse the whole archive for it). Returns the member names."""
    results_dir, checkpoint_dir = Path(results_dir), Path(checkpoint_dir)
    members: dict[str, bytes] = {}
    for path in sorted(results_dir.rglob("*")):
        relative = path.relative_to(results_dir)
        if (path.is_file() and path.stat().st_mtime >= since and relative.parts[0] != CHECKPOINTS
                and not any(part.startswith(".") for part in relative.parts)):
            name, data = str(PurePosixPath(RESULTS, *relative.parts)), path.read_bytes()
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


def is_record(name: str) -> bool:
    path = PurePosixPath(name)
    return path.parts[0] == RESULTS and path.parent.name == "runs" and path.suffix == ".json"


def _better_here(target: Path, arrived: dict) -> bool:
    """Whether `target` already holds a record more complete than `arrived` (`records.completeness`, cells.distinct's
    rule: finished training before a paused checkpoint's, then more queries, then the later finish). An
    unreadable target is not better."""
    try:
        return completeness(read_record(target)) > completeness(arrived)
    except MembenchError:
        return False


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's files (folders skipped); MembenchError for anything that is not a results file or checkpoint."""
    files = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if member.isdir() and not path.is_absolute() and ".." not in path.parts:
            continue
        if (not member.isfile() or path.is_absolute() or ".." in path.parts or len(path.parts) < 2
                or path.parts[0] not in (RESULTS, CHECKPOINTS)
                or (path.parts[0] == RESULTS and path.parts[1] == CHECKPOINTS)
                or (path.parts[0] == CHECKPOINTS and (len(path.parts) != 2 or path.suffix != ".pt"))):
            raise MembenchError(f"{archive}: member '{member.name}' is not a results file or checkpoint "
                                f"(expected results/... or checkpoints/<key>.pt); nothing was unpacked")
        files.append(member)
    return files


def read_archive(archive: Path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(member name -> bytes, member name -> record of each run record), every member and record checked;
    MembenchError naming the archive and member otherwise. `unpack` writes nothing before this passes."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            contents = {m.name: tar.extractfile(m).read() for m in _checked_members(tar, archive)}
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise MembenchError(f"{archive} is not a readable session archive ({type(exc).__name__}: {exc}); "
                            f"carry it back again or run `membench pack` on the machine that made it") from None
    try:
        records = {name: parse_record(data, f"{archive}: member {name}") for name, data in contents.items()
                   if is_record(name)}
        if THROUGHPUT_CSV in contents:
            _check_throughput(contents[THROUGHPUT_CSV], f"{archive}: member {THROUGHPUT_CSV}")
    except MembenchError as exc:
        raise MembenchError(f"{exc}; nothing was unpacked: carry the archive back again or run `membench pack` "
                            "on the machine that made it") from None
    return contents, records


def _check_throughput(data: bytes, label: str) -> None:
    """MembenchError naming `label` unless `data` is a complete throughput CSV (rows `merge` can take)."""
    from membench.throughput import existing_table

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "throughput.csv"
        path.write_bytes(data)
        try:
            existing_table(path)
        except MembenchError as exc:
            reason = str(exc).removeprefix(str(path)).split("; move it aside")[0]
            raise MembenchError(f"{label}{reason}") from None


def _is_curve(name: str) -> bool:
    path = PurePosixPath(name)
    return path.parts[0] == RESULTS and path.parent.name == "training" and path.suffix == ".csv"


def _last_step(data: bytes) -> float:
    """The last step of a training curve's CSV (-1 where it has none or cannot be read: any curve is better)."""
    import pandas as pd

    try:
        steps = pd.to_numeric(pd.read_csv(io.BytesIO(data))["step"])
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return -1.0
    return float(steps.max()) if len(steps) else -1.0


def _curve_kept_because(name: str, target: Path, data: bytes, users: dict[str, list[bool]]) -> str | None:
    """Why the training curve here (`target`) is kept over the archive's `name` (`data`), or None: a curve follows
    the records that use it (kept here when every arriving one is kept out); one no arriving record uses is kept
    where it goes further (sessions unpacked out of order)."""
    if name in users:
        return "the records that use it are kept here" if all(users[name]) else None
    here, there = _last_step(target.read_bytes()), _last_step(data)
    return f"its training goes further (step {here:g} against {there:g})" if here > there else None


def check_targets(archive: Path, contents: dict[str, bytes], root: Path) -> None:
    """MembenchError, before anything is written, where a results file of the archive cannot be written under
    `root` (a folder in its place, or a file in place of one of its folders) or the throughput CSV its rows are
    merged into is unreadable."""
    from membench.throughput import existing_table

    for name in contents:
        if name.startswith(f"{CHECKPOINTS}/"):
            continue
        target = root / name
        blocked = [folder for folder in target.parents if folder.is_relative_to(root) and folder.is_file()]
        if target.is_dir() or blocked:
            what = f"{target} is a folder" if target.is_dir() else f"{blocked[-1]} is a file, not a folder"
            raise MembenchError(f"{archive}: its {name} cannot be written here ({what}); move that aside and unpack "
                                "again; nothing was unpacked")
    if THROUGHPUT_CSV in contents and (root / THROUGHPUT_CSV).is_file():
        try:
            existing_table(root / THROUGHPUT_CSV)
        except MembenchError as exc:
            raise MembenchError(f"{exc} (the archive's rows are merged into it); nothing was unpacked") from None


def check_checkpoints(archive: Path, contents: dict[str, bytes]) -> tuple[dict[str, dict], list[str]]:
    """(checkpoint key -> checkpoint, of each readable checkpoint member; the unreadable members' names, each
    warned about); MembenchError, before anything is written, where one was trained under another key than its
    name's (another model's checkpoint under that name)."""
    readable: dict[str, dict] = {}
    unreadable: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in contents.items():
            if not name.startswith(f"{CHECKPOINTS}/"):
                continue
            copy = write_atomic(Path(scratch) / PurePosixPath(name).name, lambda h, d=data: h.write(d))
            try:
                saved = read_checkpoint(copy)
            except UNREADABLE as exc:
                warn(f"{archive}: its {name} is not a readable checkpoint ({type(exc).__name__}): not shipped, nor "
                     "the records and curve that use it; the other files are written (rerun the session that made "
                     "it to train it again)")
                unreadable.append(name)
                continue
            if saved.get("key", copy.stem) != copy.stem:
                raise MembenchError(f"{archive}: its {name} is the checkpoint trained as {saved['key']}, another "
                                    "run's, under this name; nothing was unpacked (pack the session again)")
            readable[copy.stem] = saved
    return readable, unreadable


def _weights_kept_out(archive: Path, record: dict, arriving: dict[str, dict], unreadable: set[str],
                      kept: dict[str, tuple[int, str] | None], root: Path) -> str | None:
    """Why the arriving `record` is not written (its checkpoint unreadable in the archive, or its weights not
    those root/results/checkpoints will hold for its key: `shipping.keeps_shipped`), or None. `kept`: (step,
    digest) of the checkpoint each key will hold, filled as keys are met (a key's records share it)."""
    training = record.get("training") or {}
    key, recorded = training.get("checkpoint_key"), training.get("weights_digest")
    if not key:
        return None
    if key in unreadable:
        return f"its checkpoint {CHECKPOINTS}/{key}.pt in {archive} is unreadable"
    if recorded is None:
        return None
    if key not in kept:
        shipped = readable_checkpoint(Path(root) / RESULTS / CHECKPOINTS / f"{key}.pt")
        final = shipped if key not in arriving or keeps_shipped(shipped, arriving[key]) else arriving[key]
        kept[key] = None if final is None else (final["step"], weights_digest(final["model"]))
    if kept[key] is None or kept[key][1] == recorded:
        return None
    return (f"it was evaluated with other weights than the {RESULTS}/{CHECKPOINTS}/{key}.pt kept (step "
            f"{kept[key][0]}); delete that shipped checkpoint and unpack again to take the archive's")


def _derived(name: str, contents: dict[str, bytes]) -> bool:
    """Whether member `name` is a file beside a results folder's runs/ (a table or plot that `membench report` or
    `membench figures` derives from the records: the session's covers only its own runs)."""
    folder = PurePosixPath(name).parent
    return folder.parts[0] == RESULTS and any(PurePosixPath(other).parent == folder / "runs" for other in contents)


def unpack(archive: Path, root: Path, together: tuple[dict[str, dict], set[str]] | None = None
           ) -> tuple[list[Path], list[Path], list[str]]:
    """Write `archive`'s results files under the checkout `root` and ship its checkpoints into
    root/results/checkpoints. Left out, with a warning: the tables and plots beside a runs/ folder (`_derived`:
    `membench report` remakes them from every record), and a record (and its curve) whose checkpoint member is
    unreadable or whose weights are not those the shipped folder keeps (`_weights_kept_out`), judged against
    `together`: (key -> checkpoint, unreadable keys) of every archive unpacked together (`check_checkpoints`
    of each; the volumes of one session: a record and its checkpoint may travel in different ones), by default
    this archive's. Returns
    (results files written, checkpoints shipped, members of checkpoints that could not be read and were not
    shipped)."""
    import pandas as pd

    from membench.throughput import merge

    contents, arriving = read_archive(archive)
    check_targets(archive, contents, Path(root))
    if together is None:
        readable, unreadable = check_checkpoints(archive, contents)
        together = readable, {PurePosixPath(name).stem for name in unreadable}
    every, bad = together
    unreadable = [name for name in contents if name.startswith(f"{CHECKPOINTS}/") and PurePosixPath(name).stem
                  not in every]
    kept: dict[str, tuple[int, str] | None] = {}
    refused = {name: why for name, record in arriving.items()
               if (why := _weights_kept_out(archive, record, every, bad - set(every), kept, Path(root)))}
    for name, why in refused.items():
        warn(f"{archive}: its record {name} is not written: {why}")
    kept_here = {name for name, record in arriving.items()  # records a better one here keeps out
                 if name in refused or ((Path(root) / name).exists() and _better_here(Path(root) / name, record))}
    users: dict[str, list[bool]] = {}  # curve member -> for each arriving record using it: kept out
    refused_curves: dict[str, bool] = {}  # curve member -> every arriving record using it refused
    for name, record in arriving.items():
        if curve := (record.get("training") or {}).get("curve"):
            member = str(PurePosixPath(name).parent.parent / curve)
            users.setdefault(member, []).append(name in kept_here)
            refused_curves[member] = refused_curves.get(member, True) and name in refused
    derived = sorted(name for name in contents if _derived(name, contents))
    if derived:
        warn(f"{archive}: {len(derived)} table and plot file(s) beside its runs/ folders not written "
             f"({', '.join(derived[:3])}{', ...' if len(derived) > 3 else ''}): they show the session's runs only; "
             "`membench report` (and `membench figures`) remake them from every record")
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = []
        for name, data in contents.items():
            target = Path(root) / name
            try:
                if name.startswith(f"{CHECKPOINTS}/"):
                    if name not in unreadable:
                        checkpoints.append(write_atomic(Path(scratch) / target.name, lambda h, d=data: h.write(d)))
                elif name in derived or refused_curves.get(name) or name in refused:
                    continue
                elif name == THROUGHPUT_CSV and target.exists():  # rows merged, not the file replaced
                    merge(target, pd.read_csv(io.BytesIO(data), dtype={"commit": str}).to_dict("records"))
                    written.append(target)
                elif name in kept_here:  # (not one refused: those are skipped above)
                    warn(f"{target} kept over the archive's {name}: "
                         f"{better_because(read_record(target), arriving[name])}")
                elif _is_curve(name) and target.exists() and (why := _curve_kept_because(name, target, data, users)):
                    warn(f"{target} kept over the archive's {name}: {why}")
                else:
                    written.append(write_atomic(target, lambda h, d=data: h.write(d)))
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise MembenchError(f"{archive}: could not write {target} ({type(exc).__name__}: {exc}); written "
                                    f"before it: {len(written)} file(s); fix the cause and unpack again") from None
        shipped = ship_checkpoints(None, Path(scratch), checkpoints, target=Path(root) / RESULTS / CHECKPOINTS)
    return written, shipped, unreadable
