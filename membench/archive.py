"""The archive that carries a lent machine's session home: packed there (`membench.packing`), unpacked here.

Here, `unpack` checks every member before writing anything (plain files under results/ and checkpoints/,
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

from membench.checkpoints import UNREADABLE, read_checkpoint, readable_checkpoint, weights_digest
from membench.errors import MembenchError
from membench.shipping import keeps_shipped, ship_checkpoints
from membench.records import better_because, completeness, parse_record, read_record
from membench.store import warn, write_atomic

RESULTS, CHECKPOINTS = "results", "checkpoints"
THROUGHPUT_CSV = "results/bench/throughput.csv"  # merged row by row on unpacking


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


UNREADABLE_ARCHIVE = (tarfile.TarError, EOFError, OSError, UnicodeDecodeError)  # what reading a damaged one raises


def unreadable_archive(archive: Path, exc: BaseException) -> MembenchError:
    """The one-line error for an archive that cannot be read, and its fix."""
    return MembenchError(f"{archive} is not a readable session archive ({type(exc).__name__}: {exc}); carry it back "
                         "again or run `membench pack` on the machine that made it")


def read_archive(archive: Path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(member name -> bytes, member name -> record of each run record), every member and record checked;
    MembenchError naming the archive and member otherwise. `unpack` writes nothing before this passes."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            contents = {m.name: tar.extractfile(m).read() for m in _checked_members(tar, archive)}
    except UNREADABLE_ARCHIVE as exc:
        raise unreadable_archive(archive, exc) from None
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
