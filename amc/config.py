"""Typed configs from YAML / dicts: nested frozen dataclasses, unknown keys rejected with the valid ones.

The same dataclass object feeds the CLI, YAML files, Ray Tune's search space and MLflow params
(:func:`flatten` gives ``section.field`` keys).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from amc.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Builds dataclass ``cls`` from ``data``, recursing into dataclass-typed fields."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of field: value")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Reads a YAML file into dataclass ``cls``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    return from_dict(cls, data, where=str(p))


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass (tuples become lists), for YAML and JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"section.field": value}`` for a nested dataclass (MLflow params, Tune keys)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def save_yaml(obj: Any, path: str | Path) -> Path:
    import yaml

    from amc.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
