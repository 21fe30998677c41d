"""Checks of model options and config fields: each bad value is one MembenchError naming the field and what it
must be, raised where the option is given (a config's __post_init__, the runner), not deep inside a model."""
from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Any, Mapping

import numpy as np

from membench.errors import MembenchError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_fields(label: str, config: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 fractions: tuple[str, ...] = (), unit: tuple[str, ...] = ()) -> None:
    """MembenchError naming the first field of `config` out of range: each of `positive` a finite number > 0 (None
    passes: sized from the budget), of `non_negative` a finite number >= 0, of `fractions` strictly between 0 and
    1, of `unit` in [0, 1], and a `channels` field, where
    the config has one, a non-empty list of positive integers (residual block widths). For configs' __post_init__."""
    for name in positive:
        if (value := getattr(config, name)) is not None:
            check_positive_number(label, name, value)
    for name in non_negative:
        value = getattr(config, name)
        if not (is_finite(value) and value >= 0):
            raise MembenchError(f"{label}: {name}={value!r} must be a finite number >= 0")
    for name in fractions:
        value = getattr(config, name)
        if not (is_finite(value) and 0 < value < 1):
            raise MembenchError(f"{label}: {name}={value!r} must lie strictly between 0 and 1")
    for name in unit:
        value = getattr(config, name)
        if not (is_finite(value) and 0 <= value <= 1):
            raise MembenchError(f"{label}: {name}={value!r} must lie in [0, 1]")
    channels = getattr(config, "channels", (1,))
    if not isinstance(channels, (list, tuple)) or not channels or not all(is_int(c) and c > 0 for c in channels):
        raise MembenchError(f"{label}: channels={channels!r} must be a list of positive integers such as [32,64,96] "
                            f"(residual block widths)")


def check_positive_number(model: str, name: str, value: Any) -> None:
    """MembenchError unless `value` is a finite real number > 0."""
    if not (is_finite(value) and value > 0):
        raise MembenchError(f"{model}: {name}={value!r} must be a positive number")


def check_positive_int(model: str, name: str, value: Any) -> None:
    """MembenchError unless `value` is an integer >= 1."""
    if not (is_int(value) and value >= 1):
        raise MembenchError(f"{model}: {name}={value!r} must be a positive integer")


def _check_option_type(label: str, key: str, value: Any, default: Any, kind: type | None = None) -> None:
    """MembenchError unless `value` has the type `kind` (int, float, bool or str; default: the type of the
    option's `default`): a typo'd number does not fail deep inside a model."""
    kind = kind or type(default)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(kind)
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        given = {bool: "give true or false", int: "give a whole number", float: "give a number"}.get(kind, "give text")
        raise MembenchError(f"model '{label}': option {key}={value!r} is not of type {kind.__name__} "
                            f"(its default: {default!r}); {given}")


def _scalar_type(hint: Any) -> tuple[type | None, bool]:
    """The scalar type (bool, int, float or str; None for another or no hint) an annotation declares, and
    whether it admits None (`float | None`)."""
    kinds, optional = [hint], False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(kinds) < len(typing.get_args(hint))
    return (kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float, str) else None), optional


def type_hints(owner: Any) -> dict[str, Any]:
    """`owner`'s resolved annotations; {} where they do not resolve (the defaults' types then decide)."""
    try:
        return typing.get_type_hints(owner)
    except Exception:  # noqa: BLE001 (any annotation that does not resolve)
        return {}


def declared_value(label: str, key: str, value: Any, default: Any, hint: Any) -> Any:
    """`value` after `_check_option_type` against the scalar type `hint` declares (else `default`'s), an int
    given for a float made a float (`--option gain_init=2` is 2.0); None passes where the hint admits it."""
    kind, optional = _scalar_type(hint)
    if value is None and optional:
        return value
    _check_option_type(label, key, value, default, kind)
    is_float = (kind or type(default)) is float
    return float(value) if is_float and isinstance(value, int) and not isinstance(value, bool) else value


def check_constructor_options(cls: type, label: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` of a model that is not trained, an int given for a float made a float; MembenchError for one
    whose value has another type (int, float, bool or str) than its constructor's annotation for it (None
    passing where that admits None), else its default: a typo'd number does not fail deep inside a read."""
    parameters, hints = inspect.signature(cls.__init__).parameters, type_hints(cls.__init__)
    checked = dict(options)
    for key, value in options.items():
        if key in parameters and parameters[key].default is not inspect.Parameter.empty:  # `degree: float = 3`
            checked[key] = declared_value(label, key, value, parameters[key].default, hints.get(key))  # takes 2.5
    return checked


def plain_config(config: Any, label: str, path: str = "config()") -> Any:
    """A model's `config()` as records and checkpoint keys store it: dicts with string keys, lists, and plain
    bools, numbers, strings and Nones (a NumPy scalar made the Python one); MembenchError naming the first other
    value, so a model whose config a record cannot hold is refused when it is built, before any run."""
    if config is None:
        return config
    for kind in (bool, int, float, str):  # subclasses (IntEnum, StrEnum, np.str_) as the plain value
        if isinstance(config, kind):
            return kind(config) if kind is not str else str.__str__(config)
    if isinstance(config, np.generic) and config.dtype.kind in "biuf":
        return config.item()
    if isinstance(config, dict) and all(type(key) is str for key in config):
        return {key: plain_config(value, label, f"{path}[{key!r}]") for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [plain_config(value, label, f"{path}[{index}]") for index, value in enumerate(config)]
    what = "a dict with a key that is not a string" if isinstance(config, dict) else f"a {type(config).__name__}"
    raise MembenchError(f"model '{label}': {path} is {what}, which a record cannot store; return plain numbers, "
                        "strings, lists and dicts with string keys (int(x) or x.item() for a tensor's or array's value)")
