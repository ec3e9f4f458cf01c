"""Typed configs from YAML / dicts, and the checks every input file passes at the boundary.

Configs are nested frozen dataclasses. :func:`from_dict` checks every value against its field's type
hint before the dataclass is built (a bool is not a number, numbers are finite, integers fit 64 bits,
unknown and missing keys are named) and reports the field as a dotted path (``env.target_ratio``).
The same dataclass object feeds the CLI, YAML files, Ray Tune's search space and MLflow params
(:func:`flatten` gives ``section.field`` keys).

:func:`read_input_text` is the one gate every text input (config YAML, policy JSON) passes: missing
files, directories, dangling symbolic links, empty files and non-UTF-8 bytes get a one-line error.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from amc.errors import AmcError, ConfigError

T = TypeVar("T")
E = TypeVar("E", bound=AmcError)

INT_LIMIT = 2**63
"""Integers in configs must fit a signed 64-bit integer (seeds, counts, sizes)."""
MAX_INPUT_BYTES = 16 * 2**20
"""Largest config or policy file read (they are a few kilobytes)."""


class _ShortRepr(reprlib.Repr):
    """reprlib with YAML / JSON spelling of constants and no failure on integers of thousands of digits."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"{'-' if x < 0 else ''}<an integer of {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:
        return "null"


_REPR = _ShortRepr()


def show(value: Any) -> str:
    """A short one-line rendering of a value read from a file, in YAML / JSON spelling for constants."""
    return _REPR.repr(value).replace("\n", "\\n")


# --------------------------------------------------------------------------- input files
def check_input_path(
    path: str | Path, what: str, error: type[E], expected: str, max_bytes: int | None = MAX_INPUT_BYTES
) -> Path:
    """Checks that ``path`` names a readable, non-empty regular file (following symbolic links).

    Args:
        path: The path given by the user.
        what: What the file is, for messages (``policy file``, ``config file``).
        error: The project error class to raise.
        expected: What should be there, for the directory message (``a policy .json file``).
        max_bytes: Largest size accepted (None: no limit).

    Returns:
        The path.

    Raises:
        error: When the path is missing, a directory, a dangling link, not a regular file, unreadable,
            empty or too large.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise error(f"{what} path {show(text)} contains a NUL character; pass a real file path")
    p = Path(text)
    try:
        if p.is_symlink() and not p.exists():
            raise error(
                f"{what} {p} is a symbolic link to {os.readlink(p)}, which does not resolve (its target is missing or the link loops); fix the link or pass the file itself"
            )
        if not p.exists():
            raise error(f"{what} {p} does not exist; check the path")
        if p.is_dir():
            raise error(f"{what} {p} is a directory, expected {expected}")
        if not p.is_file():
            raise error(f"{what} {p} is not a regular file, expected {expected}")
        size = p.stat().st_size
    except OSError as exc:
        raise error(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise error(f"{what} {p} is empty, expected {expected}")
    if max_bytes is not None and size > max_bytes:
        raise error(f"{what} {p} is {size} bytes, larger than any {what} ({max_bytes} at most); check the path")
    return p


def read_input_text(path: str | Path, what: str, error: type[E], expected: str) -> tuple[Path, str]:
    """Reads a UTF-8 text input file after :func:`check_input_path` (a UTF-8 byte-order mark is allowed).

    Returns:
        The path and its text.

    Raises:
        error: When the file fails :func:`check_input_path`, is not UTF-8 or holds only whitespace.
    """
    p = check_input_path(path, what, error, expected)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise error(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None
    if not text.strip():
        raise error(f"{what} {p} holds only whitespace, expected {expected}")
    return p, text


# --------------------------------------------------------------------------- typed values
def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _describe(hint: Any) -> str:
    """What a type hint expects, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list) or hint in (tuple, list):
        return f"a list ({_describe(args[0])} each)" if args else "a list"
    if origin is dict or hint is dict:
        return f"a mapping ({_describe(args[0])} -> {_describe(args[1])})" if args else "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _fail(path: str, hint: Any, value: Any, extra: str = "") -> ConfigError:
    return ConfigError(f"{path} must be {_describe(hint)}, got {show(value)}{extra}")


def _scalar(value: Any, hint: type, path: str) -> Any:
    """Checks a bool / int / float / str value (bool is never a number; numbers are finite)."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, hint, value)
    if isinstance(value, bool) or (hint in (int, float) and not isinstance(value, (int, float))):
        extra = ""
        if isinstance(value, str) and _looks_numeric(value):
            exponent = "e" in value.lower() and "." not in value
            extra = (
                " (YAML reads 1e-4 as text: write 1.0e-4)" if exponent else " (text: write the number without quotes)"
            )
        raise _fail(path, hint, value, extra)
    if hint is int:
        if not isinstance(value, int):
            raise _fail(path, hint, value)
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{path} is {show(value)}, too large; integers must fit 64 bits")
        return value
    if hint is float:
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"{path} is {show(value)}, too large for a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number, got {show(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise _fail(path, hint, value, " (quote it if it is text)" if isinstance(value, (int, float)) else "")
        if "\x00" in value:
            raise ConfigError(f"{path} contains a NUL character: {show(value)}")
        return value
    if not isinstance(value, hint):
        raise _fail(path, hint, value)
    return value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _union(value: Any, args: tuple[Any, ...], path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _fail(path, typing.Union[args], value)  # type: ignore[arg-type]  # noqa: UP007
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return coerce(value, options[0], path)
    for option in options:
        try:
            return coerce(value, option, path)
        except ConfigError:
            continue
    raise _fail(path, typing.Union[args], value)  # type: ignore[arg-type]  # noqa: UP007


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Checks ``value`` against type hint ``hint`` and returns it in that type (lists become tuples where
    the hint is a tuple, nested mappings become dataclasses).

    Args:
        value: A value read from YAML / JSON.
        hint: The field's type hint (resolved, not a string).
        path: Dotted field path for messages (``env.target_ratio``).

    Raises:
        ConfigError: When the value does not fit, naming ``path`` and what is expected.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _union(value, args, path)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _fail(path, hint, value)
        return from_dict(hint, value, path)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _fail(path, hint, value)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path} must be a list of {len(args)} values, got {show(value)}")
            items = [coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else Any
            items = [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _fail(path, hint, value)
        key_hint, value_hint = args if args else (Any, Any)
        return {
            coerce(k, key_hint, f"{path} key {show(k)}"): coerce(v, value_hint, f"{path}[{show(k)}]")
            for k, v in value.items()
        }
    if isinstance(hint, type):
        return _scalar(value, hint, path)
    return value


# --------------------------------------------------------------------------- dataclasses
def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``, checking every value and recursing into dataclass fields.

    Args:
        cls: A dataclass whose fields have resolvable type hints.
        data: Field name -> value (``None``: all defaults).
        where: Dotted path of this section (``env``; empty at the top), used in messages.

    Raises:
        ConfigError: On an unknown or missing key, a value of the wrong type, or a value the
            dataclass's own checks reject; the message names the dotted field.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping of field: value, got {show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted((k for k in data if k not in fields), key=str)
    if unknown:
        key = unknown[0]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        if isinstance(key, str):
            name = show(_join(where, key))
        else:
            name = show(key) + (f" in section {where}" if where else "")
        valid = f"valid keys of {where}" if where else "valid keys at the top level"
        raise ConfigError(f"unknown key {name}{more}; {valid}: {', '.join(fields)}")
    missing = [
        n
        for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # type: ignore[misc]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])} is missing; it has no default, so set it")
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(value, hints[name], _join(where, name)) for name, value in data.items()}
    return _build(cls, kwargs, where)


def _build(cls: type[T], kwargs: dict[str, Any], where: str) -> T:
    """Calls ``cls(**kwargs)``; the dataclass's own errors get the section's dotted path."""
    try:
        return cls(**kwargs)
    except AmcError as exc:
        raise _in_section(exc, cls, where) from None
    except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _in_section(exc: AmcError, cls: type, where: str) -> AmcError:
    """The same error with ``where`` in front: ``env.target_ratio ...`` when it starts with a field name."""
    if not where:
        return exc
    message = str(exc)
    head = message.split(" ", 1)[0].rstrip(":,")
    names = {f.name for f in dataclasses.fields(cls)}
    text = f"{where}.{message}" if head in names else f"{where}: {message}"
    return retyped(exc, text)


def retyped(exc: AmcError, message: str) -> AmcError:
    """A new error of ``exc``'s class with ``message`` (a ConfigError where the class needs more arguments)."""
    try:
        return type(exc)(message)
    except TypeError:
        return ConfigError(message)


def field_hint(cls: type, dotted: str) -> Any:
    """The type hint of dotted field ``a.b.c`` of dataclass ``cls``.

    Raises:
        ConfigError: When a part of the path is not a field.
    """
    hint: Any = cls
    done: list[str] = []
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"{'.'.join(done)} has no fields, so {dotted!r} is not a field")
        hints = typing.get_type_hints(hint)
        if part not in hints or part not in {f.name for f in dataclasses.fields(hint)}:
            raise ConfigError(
                f"unknown field {dotted!r}: {hint.__name__} has {', '.join(f.name for f in dataclasses.fields(hint))}"
            )
        hint, done = hints[part], [*done, part]
    return hint


def coerce_field(cls: type, dotted: str, value: Any) -> Any:
    """Checks ``value`` for dotted field ``dotted`` of dataclass ``cls`` (sweep grids and overrides).

    Raises:
        ConfigError: When the field does not exist or the value does not fit its type.
    """
    return coerce(value, field_hint(cls, dotted), dotted)


# --------------------------------------------------------------------------- YAML
def _strict_loader() -> type:
    """A SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                    except TypeError:
                        continue  # unhashable: the base class reports it
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {show(key)} appears twice in one mapping", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def parse_yaml(text: str, where: str) -> Any:
    """Parses YAML text with the safe loader; every failure becomes a one-line ConfigError."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{where} is not valid YAML: {problem}{at}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a config") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2024-13-01
        raise ConfigError(f"{where} holds a value YAML cannot read: {exc}") from None


def apply_overrides(cls: type, data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with ``dotted.key=value`` overrides applied (``--set env.target_ratio=0.3``).

    Each value is read as YAML (``0.3``, ``true``, ``[a, b]``, ``null``); the key must be a field of ``cls``
    (a mistyped one names the valid keys of its section). Values are checked later, with the whole config.

    Raises:
        ConfigError: On an override without ``=``, a key that is not a field, or a value that is not YAML.
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {show(item)}: write KEY=VALUE with a dotted key, e.g. env.target_ratio=0.3")
        try:
            field_hint(cls, key)
        except ConfigError as exc:
            raise ConfigError(f"--set {key}: {exc}") from None
        value = parse_yaml(text, f"--set {key}")
        *parents, last = key.split(".")
        node = out
        for name in parents:
            child = node.get(name)
            node[name] = child = dict(child) if isinstance(child, Mapping) else {}
            node = child
        node[last] = value
    return out


def load_yaml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Reads a YAML file into dataclass ``cls``, with ``dotted.key=value`` ``overrides`` applied on top.

    Raises:
        ConfigError: When the file is missing, unreadable, empty, not YAML, not a mapping at the top, or
            a field is unknown, missing or invalid; the message names the file and the dotted field.
    """
    p, text = read_input_text(path, "config file", ConfigError, "a YAML config file (see experiments/configs/)")
    data = parse_yaml(text, f"config file {p}")
    if data is None:
        raise ConfigError(f"config file {p} holds no settings (only comments); write field: value lines")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping of field: value at the top, got {show(data)}")
    data = apply_overrides(cls, data, overrides)
    try:
        return from_dict(cls, data)
    except AmcError as exc:
        where = "with --set " + ", ".join(overrides) if overrides else ""
        raise retyped(exc, f"config file {p}{' ' + where if where else ''}: {exc}") from None


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
    """Writes dataclass ``obj`` as YAML atomically."""
    import yaml

    from amc.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
