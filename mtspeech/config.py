"""Typed experiment configs: frozen dataclasses built from YAML values.

YAML holds values only (PyYAML `safe_load`). A file may name a `base:` file that it
extends; mappings merge key by key and a `null` removes a key (so an ablation variant is a
small diff: `tasks: {speaker: null}` drops the speaker task). Command-line overrides are
dotted `key.path=value` strings whose value is parsed as YAML. Unknown keys and wrong types
raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config, following `base:` links (relative to the including file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(load_yaml(path.parent / base), data)


def merge(base: Mapping, update: Mapping) -> dict:
    """Deep-merge `update` into a copy of `base`; a `None` value deletes the key."""
    out = dict(base)
    for key, value in update.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            out[key] = merge(out[key] if isinstance(out.get(key), Mapping) else {}, value)
        else:
            out[key] = value
    return out


def apply_overrides(data: Mapping, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML; `null` deletes)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        value = yaml.safe_load(raw)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        data = merge(data, nested)
    return dict(data)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain `data`, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping for {cls.__name__}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(_join(where, k) for k in unknown)
        raise ConfigError(f"unknown config key(s) {keys}; {cls.__name__} accepts: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key(s) {', '.join(_join(where, m) for m in missing)}")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested, with tuples) → plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _describe(tp: Any) -> str:
    """A type as an error message names it: `an integer`, `'learned'`, ..."""
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        accepted = " or ".join(_describe(o) for o in options if o is not type(None))
        raise ConfigError(f"{where}: {value!r} is not {accepted}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    return value
