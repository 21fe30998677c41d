"""Registries: model names and task kinds to classes, listed by import path.

Both registries follow one convention: a name maps to 'module:Class', imported only when
used, so their contents never depend on what was imported before. Adding a model (or a
task kind) to membench is one line here plus its module. Models defined elsewhere run
without editing membench, in two ways:

- `membench run --model my_module:MyMemory` (a class importable from the current
  directory or PYTHONPATH), or
- an entry point in the group `membench.models` of an installed package.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterator

from membench.errors import MembenchError
from membench.interface import AssociativeMemory

BUILTIN_MODELS: dict[str, str] = {
    "hopfield_hebb": "baselines.hopfield:HebbHopfield",
    "hopfield_storkey": "baselines.hopfield:StorkeyHopfield",
    "hopfield_pseudoinverse": "baselines.hopfield:PseudoInverseHopfield",
    "raw_slots": "baselines.raw_slots:RawSlotMemory",
    "passthrough": "baselines.passthrough:PassThrough",
    "mean_fill": "baselines.mean_fill:MeanFill",
    "modern_hopfield": "baselines.modern_hopfield:ModernHopfield",
    "dense_associative_memory": "baselines.dense_am:DenseAssociativeMemory",
    "universal_hopfield": "baselines.universal_hopfield:UniversalHopfield",
    "sparse_distributed_memory": "baselines.sdm:SparseDistributedMemory",
    # meta-learned models (trained by membench.training.meta_train)
    "ebmm": "ebmm.memory:EBMM",
    "memory_networks": "baselines.memory_networks:MemoryNetwork",
    "memory_networks_learned": "baselines.memory_networks:LearnedEmbeddingMemoryNetwork",
    "mann": "baselines.mann:MANN",
    "dnc": "baselines.dnc:DNC",
    "lstm": "baselines.lstm:LSTMMemory",
    "differentiable_plasticity": "baselines.plasticity:DifferentiablePlasticity",
    "kanerva_machine": "baselines.kanerva_machine:KanervaMachine",
}

ENTRY_POINT_GROUP = "membench.models"

TASK_KINDS: dict[str, str] = {
    "binary": "membench.tasks:BinaryTask",
    "omniglot": "membench.image_tasks:OmniglotTask",
    "cifar10": "membench.image_tasks:Cifar10Task",
}


_SHADOWED_WARNED: set[str] = set()


def _entry_point_models() -> dict[str, str]:
    """Models exposed in the entry point group; one warning per process for each whose name a built-in model
    takes (the built-in one is what that name runs)."""
    from membench.store import warn

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in sorted(set(found) & set(BUILTIN_MODELS) - _SHADOWED_WARNED):
        _SHADOWED_WARNED.add(name)
        if found[name] != BUILTIN_MODELS[name]:
            warn(f"the entry point '{name}' ({found[name]}) of group {ENTRY_POINT_GROUP} is shadowed by the built-in "
                 f"model of that name: rename it, or run it as --model {found[name]}")
    return found


def available_models() -> dict[str, str]:
    """All model names known without importing them: name -> 'module:Class'."""
    return {**_entry_point_models(), **BUILTIN_MODELS}


BUILTIN_DIRS = tuple(Path(__file__).resolve().parent.parent / name for name in ("membench", "baselines", "ebmm"))
#   this checkout's packages: their code is versioned by the record's git commit


def model_source_digest(cls: type) -> str | None:
    """A digest of the source files defining a model from outside membench and the classes it inherits from
    (None for built-in models, or when a file cannot be read): records and checkpoint keys carry it, so a
    run of a model whose code changed since is run (and trained) again rather than skipped."""
    files = model_source_files(cls)
    if is_builtin_model(cls) or not files:
        return None
    try:
        return hashlib.sha1(b"".join(path.read_bytes() for path in files)).hexdigest()[:12]
    except OSError:  # a file is gone
        return None


def is_builtin_file(path: Path) -> bool:
    """True for a (resolved) file of this checkout's packages."""
    return any(path.is_relative_to(folder) for folder in BUILTIN_DIRS)


def is_builtin_model(cls: type) -> bool:
    """True for a class defined in this checkout's packages; False for any other (one with no source file,
    defined interactively or in a script's __main__, too)."""
    try:
        return is_builtin_file(Path(inspect.getsourcefile(cls)).resolve())
    except TypeError:
        return False


def model_source_files(cls: type) -> list[Path]:
    """The source files outside membench defining `cls` and the memory classes it inherits from (sorted; not
    torch's or other libraries')."""
    files = set()
    for klass in cls.__mro__:
        if not issubclass(klass, AssociativeMemory) or klass is AssociativeMemory:
            continue
        try:
            source = Path(inspect.getsourcefile(klass)).resolve()
        except TypeError:  # built in, or defined interactively
            continue
        if not is_builtin_file(source):
            files.add(source)
    return sorted(files)


def _import_class(path: str, base: type = AssociativeMemory) -> type:
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name.isidentifier():
        raise MembenchError(f"'{path}' is not a module and a class; give them as 'module:Class', e.g. "
                            "'my_memory:MyMemory' (my_memory.py in the current directory)")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        dotted = module_name.removesuffix(".py").strip("./").replace("/", ".").replace(os.sep, ".")
        raise MembenchError(f"'{path}' names a file; give a module name and class, e.g. '{dotted}:{class_name}' "
                            "(a module in the current directory or on PYTHONPATH)")
    if os.getcwd() not in sys.path:  # console scripts do not put the working directory on sys.path
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):  # the module itself
            raise MembenchError(
                f"cannot import module '{module_name}' for model '{path}': {exc}. "
                "Check the spelling, and that the module is on PYTHONPATH (the current directory is)."
            ) from None
        fix = (f"install the package that provides '{missing}'" if missing else "fix the import in the module")
        raise MembenchError(f"module '{module_name}' for model '{path}' was found, but an import inside it failed: "
                            f"{exc}; {fix}") from None
    except SyntaxError as exc:
        raise MembenchError(f"cannot import module '{module_name}': {exc.msg} in {exc.filename}, line {exc.lineno}; "
                            "fix the syntax error") from None
    except Exception as exc:  # noqa: BLE001 (any error raised while the user's module runs)
        raise MembenchError(f"importing module '{module_name}' raised {type(exc).__name__}: {exc}; "
                            "fix the module so that it imports") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        classes = [name for name, value in vars(module).items() if inspect.isclass(value) and issubclass(value, base)
                   and value is not base]
        close = difflib.get_close_matches(class_name, classes, n=1, cutoff=0.5)
        raise MembenchError(f"module '{module_name}' has no class '{class_name}'" + (
            f"; did you mean '{module_name}:{close[0]}'?" if close else
            f" (its {base.__name__} classes: {', '.join(classes)})" if classes else ""))
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise MembenchError(f"'{path}' is not a subclass of {base.__module__}.{base.__name__}")
    return cls


def resolve_model(name: str) -> type[AssociativeMemory]:
    """Return the class for a registered name or a 'module:Class' path."""
    known = available_models()
    if name in known:
        return _import_class(known[name])
    if ":" in name:
        return _import_class(name)
    module, dot, cls = name.rpartition(".")
    if os.getcwd() not in sys.path:  # (as _import_class: the working directory's modules)
        sys.path.insert(0, os.getcwd())
    if dot and module and cls.isidentifier():
        hint = f" (for class {cls} of module {module}, give '{module}:{cls}')"
    elif name.isidentifier() and _findable(name):
        hint = f" (module '{name}' is found: give its class as '{name}:ClassName')"
    else:
        hint = ""
    raise MembenchError(
        f"unknown model '{name}'{hint}. Valid models: {', '.join(sorted(known))}; "
        "or give a class as 'module:Class'."
    )


def _findable(module: str) -> bool:
    """Whether a top-level `module` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # (ValueError: __main__, whose spec is None)
        return False


def canonical_model_name(name: str) -> str:
    """The registered name of the class a 'module:Class' path names, where it is registered (so one model given
    under both names is one run and one checkpoint); any other name as given."""
    if ":" not in name:
        return name
    cls = resolve_model(name)
    path = f"{cls.__module__}:{cls.__qualname__}"
    return next((registered for registered, where in available_models().items() if where == path), name)


def make_task(config: dict):
    """Build a task (a membench.tasks.Task) from its config dict, as stored in run records: {'kind': ..., **arguments}."""
    from membench.tasks import Task

    kwargs = dict(config)
    kind = kwargs.pop("kind", None)
    if kind not in TASK_KINDS:
        raise MembenchError(f"unknown task kind '{kind}'. Valid kinds: {', '.join(sorted(TASK_KINDS))}")
    try:
        return _import_class(TASK_KINDS[kind], base=Task)(**kwargs)
    except TypeError as exc:
        raise MembenchError(f"task '{kind}' cannot take {kwargs}: {exc}") from None


def _signature_error(model: str, exc: BaseException, files: set[Path], consequence: str) -> MembenchError | None:
    """`user_model_error`'s line for a method of the model's own code called with arguments its signature does not
    take (raised where membench calls it, so no frame of the model's file is in the traceback), or None. Building
    (`__init__`, `from_spec`, `from_preset`) has its own message (membench.build)."""
    match = re.match(r"[\w.<>]+\.(\w+)\(\) (?:takes|missing|got)", str(exc)) if isinstance(exc, TypeError) else None
    if match is None or match[1] in ("__init__", "from_spec", "from_preset"):
        return None
    method = getattr(resolve_model(model), match[1], None)
    function = getattr(method, "__func__", method)  # a classmethod's function (presets)
    code = getattr(function, "__code__", None)
    if code is None or Path(code.co_filename).resolve() not in files:
        return None
    interface = getattr(AssociativeMemory, match[1], None)
    expected = f"; membench calls it as {match[1]}{inspect.signature(interface)}" if callable(interface) else ""
    return MembenchError(f"model '{model}': its {match[1]}{inspect.signature(function)} ({code.co_filename}, line "
                         f"{code.co_firstlineno}) does not take the arguments membench passes (TypeError: {exc})"
                         f"{expected}; {consequence}")


@contextlib.contextmanager
def errors_of_user_model(model: str, consequence: str) -> Iterator[None]:
    """Inside: an exception raised in the code of `model`, a model from outside membench, becomes
    `user_model_error`'s one-line MembenchError; any other passes as it is."""
    try:
        yield
    except MembenchError:
        raise
    except Exception as exc:  # noqa: BLE001 (re-raised unless it comes from the user's model)
        explained = user_model_error(model, exc, consequence)
        if explained is None:
            raise
        raise explained from None


def user_model_error(model: str, exc: Exception, consequence: str) -> MembenchError | None:
    """The one-line error for `exc` when it was raised in the code of `model`, a model from outside membench:
    its type and message, and the function, file and line of the model's code it came from, then
    `consequence`; None for an error of membench's own code (or none of the model's files in its traceback)."""
    files = set(model_source_files(resolve_model(model)))
    stack = traceback.extract_tb(exc.__traceback__)
    frames = [frame for frame in stack if Path(frame.filename).resolve() in files]
    if not frames:
        return _signature_error(model, exc, files, consequence)
    if is_builtin_file(Path(stack[-1].filename).resolve()):
        return None
    where = frames[-1]
    message = " ".join(str(exc).split())[:300]
    return MembenchError(f"model '{model}' raised {type(exc).__name__}: {message} (in {where.name}, "
                         f"{where.filename}, line {where.lineno}); {consequence}")
