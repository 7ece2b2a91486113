"""Frozen dataclass configs with help text: command-line flags, ``--set`` parsing, MLflow round-trips.

A config field is declared with :func:`option`, which stores its help (and, where the field
takes one of a few words, its ``choices``) in the field's metadata. That declaration is the
only one: :func:`add_flags` builds argparse flags from it, :func:`describe` lists it for
``bench ls``, and values arriving as strings (flags, ``--set lr=1e-4``, YAML, MLflow params)
are parsed by the field's annotation, so ``from_params(to_params(c)) == c`` for every config.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from bench.errors import BenchError, first_line


def option(default: Any, help: str, choices: Optional[Sequence[str]] = None, eval_only: bool = False,
           **kwargs: Any) -> Any:
    """A dataclass field with a default, a help string and, optionally, the words it accepts and
    whether it only changes evaluation (bench.run_config)."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices else {}),
            **({"eval_only": True} if eval_only else {})}
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls_or_obj))


def check_choices(config: Any) -> None:
    """ValueError for a field whose value has the wrong type for its annotation, or whose value
    (or any element of a tuple value) is not among its choices. Configs call it first thing in
    ``__post_init__``, so a config built in code is checked as one built from flags or YAML."""
    hints = _hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        try:
            check_type(hints[f.name], value)
        except ValueError as exc:
            raise ValueError(f"{f.name}: {exc}") from None
        allowed = f.metadata.get("choices")
        if not allowed or value is None:
            continue
        many = isinstance(value, (tuple, list))
        bad = [v for v in (value if many else (value,)) if v not in allowed]
        if bad or (many and not value):
            text = _format(value)
            got = "nothing" if not value else text if text.isprintable() and len(text) <= 80 else _show(text)
            raise ValueError(f"{f.name} must be {'among' if many else 'one of'} {', '.join(allowed)}; got {got}")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def check_type(tp: Any, value: Any) -> None:
    """ValueError unless ``value`` has type ``tp``: what :func:`coerce` accepts, except text,
    which only flags and YAML give (and :func:`replace` parses)."""
    inner = next((a for a in typing.get_args(tp) if a is not type(None)), tp) \
        if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    if isinstance(value, str) and inner is not str:
        raise ValueError(f"expected {_expected(tp)}, got str {_show(value)}")
    coerce(tp, value)


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every field, for ``bench ls --method NAME``."""
    hints = _hints(cls)
    return [(f.name, _type_name(hints[f.name], f), _format(f.default), f.metadata.get("help", ""))
            for f in fields(cls)]


def _type_name(tp: Any, f: Optional[dataclasses.Field] = None) -> str:
    if f is not None and f.metadata.get("choices"):
        return "|".join(f.metadata["choices"])
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _format(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One flag per field of ``cls``: ``--field-name VALUE``, with the field's help and default.

    Flags default to None (absent), so values from a config file are overridden only by flags
    actually given; :func:`flag_values` collects those and :func:`replace` parses them."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        text = f.metadata.get("help", "")
        if "default" not in text:
            text += f" (default: {_format(f.default)})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            metavar=_metavar(hints[f.name], f.metadata.get("choices")), help=text)


def _metavar(tp: Any, choices: Optional[Sequence[str]]) -> str:
    """``INT``, ``STR``, ``INT,...`` (tuples are comma-separated), ``{a,b}`` or ``a,b,...``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return _metavar(args[0], choices)
    if typing.get_origin(tp) in (tuple, list):
        return ",".join(choices) if choices else f"{_metavar(args[0], None)},..."
    return "{" + ",".join(choices) + "}" if choices else getattr(tp, "__name__", "VALUE").upper()


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, str]:
    """The flags of ``cls``'s fields that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def parse_value(tp: Any, text: str) -> Any:
    """Parse ``text`` as type ``tp`` (bool, int, float, str, tuple[int|float|str, ...], Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null", ""):
            return None
        return parse_value(next(a for a in args if a is not type(None)), text)
    if origin in (tuple, list):
        inner = text.replace(" ", "").strip("()[]")
        parts = inner.split(",") if inner else []
        if any(not p for p in parts):  # "1,,2" is a typo, not the list 1,2
            raise ValueError(f"empty element in {_show(text)}")
        return tuple(parse_value(args[0], p) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {_show(text)}")
    if tp in (int, float):
        try:
            return coerce(tp, tp(text))
        except ValueError:
            raise ValueError(f"expected {tp.__name__}, got {_show(text)}") from None
    return coerce(tp, tp(text))


def coerce(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``. Strings are parsed; YAML's lists become tuples and a scalar a
    one-element tuple; ints become floats and integral floats ints; None only where Optional;
    floats must be finite (no field means anything by inf or nan). Else a ValueError that
    names the expected type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, str) and tp is not str:
        return parse_value(tp, value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        try:
            return coerce(next(a for a in args if a is not type(None)), value)
        except ValueError:
            raise ValueError(f"expected {_expected(tp)}, got {type(value).__name__} {_show(value)}") from None
    if origin in (tuple, list):
        return tuple(coerce(args[0], v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float and number:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if tp is int and number and (isinstance(value, int) or value.is_integer()):
        return int(value)
    if tp is bool and isinstance(value, bool) or tp is str and isinstance(value, str):
        return value
    if tp not in (int, float, bool, str) and isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"expected {_expected(tp)}, got {type(value).__name__} {_show(value)}")


def _expected(tp: Any) -> str:
    """A type as a message says it: ``int``, ``int or none``, ``a list of int``."""
    origin, args = typing.get_origin(tp), [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return f"{_expected(args[0])} or none"
    if origin in (tuple, list):
        return f"a list of {_expected(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    """A user's value in a one-line message: its repr (newlines escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def replace(config: Any, overrides: Mapping[str, Any], what: str = "config") -> Any:
    """Return ``config`` with ``overrides`` applied; unknown names and bad values are BenchErrors."""
    if not isinstance(overrides, Mapping):
        raise BenchError(f"{what} settings must be a mapping of name: value, got {type(overrides).__name__}")
    hints = _hints(type(config))
    known = {f.name for f in fields(config)}
    parsed = {}
    for key, value in overrides.items():
        if key not in known:
            raise BenchError(f"unknown {what} field {_show(key)}; known: {', '.join(sorted(known))}")
        try:
            parsed[key] = coerce(hints[key], value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BenchError(f"bad value for {what} field {key!r}: {_show(value)} ({first_line(exc, 120)})") from None
    try:
        return dataclasses.replace(config, **parsed)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BenchError(f"invalid {what}: {first_line(exc)}") from None


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``["lr=1e-4", "iterations=200"]`` -> dict; a pair without '=' is a BenchError."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"bad --set {pair!r}: use --set key=value")
        out[key.strip()] = value.strip()
    return out


def to_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Flat string params for MLflow: ``{prefix + name: text}``."""
    return {prefix + f.name: _format(getattr(config, f.name)) for f in fields(config)}


def from_params(cls: type, params: Mapping[str, str], prefix: str = "") -> Any:
    """Inverse of :func:`to_params` (missing keys keep their defaults)."""
    mine = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    return replace(cls(), mine)


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True, default=str)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; unreadable or malformed files are BenchErrors."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BenchError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BenchError(f"config {path} is not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config {path} must be a mapping of key: value, got {type(data).__name__}")
    return data
