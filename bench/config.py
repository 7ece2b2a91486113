"""Frozen dataclass configs with help text, ``--set`` parsing and MLflow round-trips.

A config field is declared with :func:`option`, which stores its help in the field's
metadata. Values arrive as strings (``--set lr=1e-4``, MLflow params) and are parsed by
the field's annotation, so ``from_params(to_params(c)) == c`` for every config.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Mapping

from bench.errors import BenchError


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a help string (shown by ``bench ls --method``)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls_or_obj))


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every field, for ``bench ls --method NAME``."""
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _type_name(hints[f.name]), _format(f.default), f.metadata.get("help", ""))
        for f in fields(cls)
    ]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _format(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_value(tp: Any, text: str) -> Any:
    """Parse ``text`` as type ``tp`` (bool, int, float, str, tuple[int|float, ...], Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.strip().lower() in ("none", "null", ""):
            return None
        return parse_value(next(a for a in args if a is not type(None)), text)
    if origin in (tuple, list):
        parts = [p for p in text.replace(" ", "").strip("()[]").split(",") if p]
        return tuple(parse_value(args[0], p) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    return tp(text)


def _coerce(tp: Any, value: Any) -> Any:
    """Values from YAML already have Python types; strings are parsed."""
    if isinstance(value, str):
        return parse_value(tp, value)
    if isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def replace(config: Any, overrides: Mapping[str, Any], what: str = "config") -> Any:
    """Return ``config`` with ``overrides`` applied; unknown names and bad values are BenchErrors."""
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in fields(config)}
    parsed = {}
    for key, value in overrides.items():
        if key not in known:
            raise BenchError(f"unknown {what} field {key!r}; known: {', '.join(sorted(known))}")
        try:
            parsed[key] = _coerce(hints[key], value)
        except (TypeError, ValueError) as exc:
            raise BenchError(f"bad value for {what} field {key!r}: {value!r} ({exc})") from None
    try:
        return dataclasses.replace(config, **parsed)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"invalid {what}: {exc}") from None


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
        raise BenchError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config {path} must be a mapping of key: value, got {type(data).__name__}")
    return data
