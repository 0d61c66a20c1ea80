"""Loading a `Config`: YAML presets, `--set section.field=value` overrides (YAML values) type-checked
against the fields' annotations, and errors that name where a bad value came from (the `--set` item, or
else the YAML file). The sections themselves and their checks are in config.py.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

from .config import (
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    _fail,
)

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_cls(name: str) -> type:
    return {
        "model": ModelConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "eval": EvalConfig,
        "checkpoint": CheckpointConfig,
        "train": TrainConfig,
    }[name]


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, value, "must be true or false")
    return value


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "must be an integer")
    return value


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "must be a number")
    return float(value)


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(name, value, "must be a string")
    return value


# The scalar annotations a config field may have, each with its check (bool is not an int here).
_SCALARS: dict[Any, typing.Callable[[str, Any], Any]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
}


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp` (str/int/float/bool/list[int]/dict/Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            _fail(name, value, "must be a list")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            _fail(name, value, "must be a mapping")
        return dict(value)
    if tp not in _SCALARS:
        raise TypeError(f"unsupported annotation {tp!r} for {name}")
    return _SCALARS[tp](name, value)


def _build_section(sec: str, raw: dict[str, Any]) -> Any:
    cls = _section_cls(sec)
    if not isinstance(raw, dict):
        _fail(sec, raw, "must be a mapping of fields")
    known = typing.get_type_hints(cls)  # resolves the string annotations (from __future__)
    kwargs = {}
    for k, v in raw.items():
        if k not in known:
            _fail(f"{sec}.{k}", v, f"unknown field; known fields of '{sec}': {sorted(known)}")
        kwargs[k] = _coerce(f"{sec}.{k}", v, known[k])
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build a validated Config from nested dicts plus `section.field=value` overrides (YAML values)."""
    import yaml

    raw = dict(raw or {})
    for k, v in raw.items():
        if k not in SECTIONS:
            _fail(k, v, f"unknown section; known sections: {sorted(SECTIONS)}")
        if v is not None and not isinstance(v, dict):
            _fail(k, v, "must be a mapping of fields")
        raw[k] = dict(v or {})
    given: dict[str, str] = {}  # section.field -> the --set item that gave its value
    for item in overrides or []:
        key, sep, text = item.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not sep or not dot or sec not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: expected section.field=value with section in {sorted(SECTIONS)}",
                from_set=True,
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            why = getattr(err, "problem", None) or err
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {why}", from_set=True) from None
        raw.setdefault(sec, {})[name.strip()] = value
        given[f"{sec}.{name.strip()}"] = item
    try:
        return Config(**{sec: _build_section(sec, raw.get(sec, {})) for sec in SECTIONS})
    except ConfigError as err:
        # Name where the bad value came from: a --set item (else the caller names the YAML file).
        items = [given.get(".".join(re.split(r"[.\[]", f)[:2])) for f in err.fields]
        items = [i for i in items if i is not None]
        if not items:
            raise
        raise ConfigError(
            f"--set {', --set '.join(items)}: {err}", fields=err.fields, from_set=True
        ) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset and apply overrides; errors name the file and the field."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        if err.from_set:
            raise
        raise ConfigError(f"{path}: {err}", fields=err.fields) from None
