"""What the command modules share: exit statuses through click, list and option callbacks, the error wrapper."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Iterator

import click

from membench.errors import EXIT_INTERRUPTED, EXIT_PAUSED, Interrupted, MembenchError, TrainingPaused

MAX_SEED = 2**31 - 1
MAX_SIZE = 2**31 - 1  # N and batch sizes: tensor dimensions (past 2^63 torch's own sizes overflow)
DEFAULT_OUT = "membench-results"


class ExitWith(click.ClickException):
    """'<label>: <message>' (label 'Error', or 'Paused' for a pause at the time limit, which is no failure)
    and a chosen exit status."""

    def __init__(self, message: str, exit_code: int, label: str = "Error"):
        super().__init__(message)
        self.exit_code, self.label = exit_code, label

    def show(self, file=None) -> None:
        click.echo(f"{self.label}: {self.format_message()}", file=file, err=True)


class Seconds(click.FloatRange):
    """A click type for a duration: a finite number of seconds (FloatRange alone lets nan and inf through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


class PathArg(click.Path):
    """click.Path that refuses an empty or blank value (click would take it for the current directory)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a path", param, ctx)
        return super().convert(value, param, ctx)


def int_list(low: int, high: int | None = None):
    """Click callback: comma-separated integers in [low, high], duplicates dropped, at least one."""

    def parse(_ctx, param, value: str | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        example = f"{max(low, 16)},{max(low, 16) * 2}" if low > 0 else "0,1,2"
        items = [item.strip() for item in value.split(",")]  # '16, 32' is two values, '16 32' none (not 1632)
        if all(not item for item in items):
            raise click.BadParameter(f"give at least one value, e.g. --{param.name.replace('_', '-')} {example}")
        if not all(re.fullmatch(r"-?[0-9]+", item) for item in items):  # not int()'s 1_6 (16) or +16
            raise click.BadParameter(f"expected comma-separated integers such as {example}; got '{value}'")
        numbers = [int(item) for item in items]
        bad = [n for n in numbers if n < low or (high is not None and n > high)]
        if bad:
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise click.BadParameter(f"{bad[0]} is out of range: values must be {bounds}")
        return tuple(dict.fromkeys(numbers))

    return parse


def parse_options(_ctx, _param, values: tuple[str, ...]) -> dict[str, object]:
    """Click callback: KEY=VALUE pairs (VALUE read as JSON when it parses, nan and inf in any case as floats
    (for the option's own check to refuse by name), else as a string) -> dict."""
    options = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE such as hidden=256; got '{item}'")
        try:
            value = json.loads(raw)
        except ValueError:
            value = float(raw) if raw.strip().lower().lstrip("+-") in ("nan", "inf", "infinity") else raw
        if key.strip() in options:
            raise click.BadParameter(f"'{key.strip()}' is given twice; give each option once")
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class UsageErrorLine(click.ClickException):
    """A usage error (an unknown option or command, a bad option value) shown as one line, exit status 2."""

    exit_code = 2


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    """Inside, click's usage errors become UsageErrorLine (one line naming the help), but for the help itself
    that a bare `membench` shows (click's NoArgsIsHelpError)."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        raise UsageErrorLine(exc.format_message() + where) from None


class MembenchGroup(click.Group):
    """The `membench` group: a usage error prints one line, 'Error: <what>' and where the help is, not click's
    usage block above it: in the group's own options (`make_context`) and in a command's (`invoke`)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


def friendly_errors(command):
    """Turn MembenchError into 'Error: <message>' and exit status 1 ('Paused: …' and 3 when paused at the
    time limit, 130 when interrupted by Ctrl-C or SIGTERM, which stops a command as Ctrl-C does); no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        ours = previous not in (None, signal.SIG_IGN)  # not one set outside Python, nor an ignored SIGTERM
        if ours:
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            return command(*args, **kwargs)
        except TrainingPaused as exc:
            raise ExitWith(str(exc), EXIT_PAUSED, "Paused") from None
        except Interrupted as exc:
            raise ExitWith(str(exc), EXIT_INTERRUPTED) from None
        except MembenchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise ExitWith("interrupted; finished runs are kept, rerun the same command to continue",
                           EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # the reader stopped reading (`membench list | head`): click ends quietly
            raise
        except SystemExit as exc:  # sys.exit in a model's code: it would end the command quietly, results unsaved
            if exc.code == signal.SIGTERM:  # a SIGTERM handler's own exit (Ray's, while ray.init holds SIGTERM)
                raise ExitWith("interrupted; finished runs are kept, rerun the same command to continue",
                               EXIT_INTERRUPTED) from None
            where = traceback.extract_tb(exc.__traceback__)[-1]
            raise click.ClickException(f"sys.exit({exc.code!r}) was called in {where.name} ({where.filename}, line "
                                       f"{where.lineno}), which ends the command before its results are saved; "
                                       "raise an exception there instead") from None
        except OSError as exc:  # a file the checks before the work could not foresee (a full disk, permissions)
            if not exc.filename:  # not a file's (e.g. a connection refused): its own message
                raise click.ClickException(str(exc)) from None
            misplaced = {errno.EEXIST: "a file is where membench needs a folder",
                         errno.ENOTDIR: "a file is where membench needs a folder",
                         errno.EISDIR: "a folder is where membench writes a file"}.get(exc.errno)
            if misplaced:  # of os.replace(temporary, target): the target's name
                raise click.ClickException(f"cannot write {exc.filename2 or exc.filename}: {misplaced}; move it "
                                           "away, or write somewhere else, then run the command again") from None
            raise click.ClickException(f"cannot read or write {exc.filename}: {exc.strerror or exc}; check the path, "
                                       "its permissions and the free space, then run the command again") from None
        finally:
            if ours:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


PROGRESS_OPTION = click.option(
    "--progress/--no-progress", default=None,
    callback=lambda ctx, param, value: sys.stderr.isatty() if value is None else value,
    help="Show progress bars. Default: when the terminal shows them (not into a file or pipe).")
DATA_DIR_OPTION = click.option(
    "--data-dir", type=PathArg(file_okay=False, path_type=Path),
    help="Directory holding omniglot/ and cifar-10-batches-py/. Default: $MEMBENCH_DATA or ./data.")


def suite_runs(suite, models, num_patterns, seeds, queries, preset, budget, options):
    """`membench run`'s suite and its runs, from the command's parameters."""
    from membench.registry import canonical_model_name
    from membench.store import warn
    from membench.suites import get_suite

    chosen = get_suite(suite)
    names = {model: canonical_model_name(model) for model in models}
    for given, name in names.items():
        if name != given:
            warn(f"{given} is the registered model '{name}': run under that name")
    models = tuple(dict.fromkeys(names.values()))  # in order, each model once
    specs = chosen.expand(suite, tuple(models) or None, seeds, queries or chosen.queries, preset, num_patterns, budget)
    return chosen, [dataclasses.replace(s, options={**s.options, **options}) for s in specs] if options else specs
