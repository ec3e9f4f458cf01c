"""The policy file: versioned, self-describing JSON holding per-group pruning ratios.

A policy names the dense model it was made for (registry name, input shape, class count and a hash of
the dense architecture), so applying it to another model fails with a message that says so.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.config import read_input_text, retyped, show
from amc.errors import PolicyError, PolicyMismatchError
from amc.files import write_json_atomic
from amc.groups import architecture_hash
from amc.pruning import CRITERIA, GRANULARITIES

SCHEMA_VERSION = 1
POLICY_KIND = "amc-policy"
TARGET_METRICS = ("flops", "params", "latency")
MAX_INT = 2**63
MAX_NESTING = 64
"""JSON nested deeper than this is refused (a policy nests three levels)."""
_POLICY_FIELDS = (
    "schema_version",
    "kind",
    "model",
    "ratios",
    "granularity",
    "criterion",
    "round_to",
    "target",
    "measured",
    "versions",
    "created",
)
_MODEL_FIELDS = ("name", "input_shape", "num_classes", "arch_hash")
_TARGET_FIELDS = ("metric", "ratio")


@dataclass(frozen=True)
class ModelIdentity:
    """Which dense model a policy or saved model belongs to.

    Attributes:
        name: Registry name of the model (``resnet20``, ``torchvision:resnet18``), or ``python:<class>`` for a
            model built in Python.
        input_shape: Shape of one input, without the batch dimension (``[C, H, W]``).
        num_classes: Outputs of the classifier.
        arch_hash: Short hash of the dense architecture (module names, types, parameter shapes): a policy for
            another architecture is refused.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    arch_hash: str

    @classmethod
    def of(
        cls, model: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str | None = None
    ) -> ModelIdentity:
        return cls(name or f"python:{type(model).__name__}", tuple(input_shape), num_classes, architecture_hash(model))


@dataclass(frozen=True)
class Target:
    """The budget a policy was found for: keep ``ratio`` of the dense ``metric``.

    Attributes:
        metric: ``flops``, ``params`` or ``latency``.
        ratio: Fraction of the dense model's cost kept, in (0, 1].
    """

    metric: str
    ratio: float

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or self.metric not in TARGET_METRICS:
            raise PolicyError(f"target metric {show(self.metric)} is unknown; use one of {', '.join(TARGET_METRICS)}")
        if not _is_number(self.ratio) or not 0.0 < self.ratio <= 1.0:
            raise PolicyError(
                f"target ratio {show(self.ratio)} must be a number in (0, 1] (the fraction of the dense cost kept)"
            )


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce and apply policies."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": str(torch.__version__)}
    for dist in ("amc-search", "torch-pruning", "torchvision"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


@dataclass(frozen=True)
class Policy:
    """Per-group pruning ratios (fraction of channels removed) for one dense model.

    Attributes:
        model: Identity of the dense model.
        ratios: Pruning ratio per group name, each in [0, 1).
        granularity: ``channel`` (structured), ``unstructured`` or ``nm`` (2:4).
        criterion: Importance criterion that picks which channels go.
        round_to: Kept channel counts are rounded to a multiple of this.
        target: The budget the policy was found for, if any.
        measured: Figures measured for the policy (flops, params, top1, ...).
        versions: Package versions that produced it.
        created: ISO timestamp.
    """

    model: ModelIdentity
    ratios: Mapping[str, float]
    granularity: str = "channel"
    criterion: str = "l1"
    round_to: int = 1
    target: Target | None = None
    measured: Mapping[str, float] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if not isinstance(self.granularity, str) or self.granularity not in GRANULARITIES:
            raise PolicyError(f"granularity {show(self.granularity)} is unknown; use one of {', '.join(GRANULARITIES)}")
        if not isinstance(self.criterion, str) or self.criterion not in CRITERIA:
            raise PolicyError(f"criterion {show(self.criterion)} is unknown; use one of {', '.join(CRITERIA.names())}")
        if not isinstance(self.round_to, numbers.Integral) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise PolicyError(f"round_to must be an integer >= 1, got {show(self.round_to)}")
        for name, ratio in self.ratios.items():
            if not isinstance(name, str) or not name:
                raise PolicyError(f"group names in ratios must be non-empty strings, got {show(name)}")
            if not _is_number(ratio) or not 0.0 <= float(ratio) < 1.0:
                raise PolicyError(
                    f"ratio of group {name!r} is {show(ratio)}; ratios must be numbers in [0, 1) "
                    "(the fraction of channels removed; 0 keeps the group dense)"
                )

    def to_dict(self) -> dict:
        body = asdict(self)
        body["model"]["input_shape"] = list(self.model.input_shape)
        body["ratios"] = {k: float(v) for k, v in self.ratios.items()}
        body["measured"] = dict(self.measured)
        body["versions"] = dict(self.versions)
        return {"schema_version": SCHEMA_VERSION, "kind": POLICY_KIND, **body}

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Validates and builds a policy from its JSON form.

        Every field is checked for its type and range (a JSON ``true`` is not a number, numbers are
        finite); unknown fields are refused.

        Raises:
            PolicyError: naming the first field that is missing, unknown or invalid, and what it needs.
        """
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy must be a JSON object at the top, got {show(data)}")
        if data.get("kind") != POLICY_KIND:
            found = f", not {show(data['kind'])}" if "kind" in data else ""
            raise PolicyError(f'not an amc policy file ("kind" must be "{POLICY_KIND}"{found})')
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise PolicyError(
                f"policy schema version {show(version)} is not supported (this version reads {SCHEMA_VERSION})"
            )
        _no_unknown(data, _POLICY_FIELDS, "the policy")
        target = data.get("target")
        return cls(
            _identity(_required(data, "model")),
            _ratios(_required(data, "ratios")),
            _text(data.get("granularity", "channel"), "granularity"),
            _text(data.get("criterion", "l1"), "criterion"),
            _integer(data.get("round_to", 1), "round_to", 1),
            None if target is None else _target(target),
            _numbers(data.get("measured", {}), "measured"),
            _strings(data.get("versions", {}), "versions"),
            _text(data.get("created", ""), "created", allow_empty=True),
        )

    def save(self, path: str | Path) -> Path:
        """Writes the policy as JSON atomically (a half-written file never replaces a good one)."""
        return write_json_atomic(path, self.to_dict())

    def check_matches(self, identity: ModelIdentity, group_names: list[str]) -> None:
        """Raises PolicyMismatchError unless the policy was made for ``identity`` and its groups."""
        mine = self.model
        if mine.arch_hash != identity.arch_hash or mine.input_shape != identity.input_shape:
            raise PolicyMismatchError(
                f"this policy was made for model {mine.name!r} (input {list(mine.input_shape)}, architecture "
                f"{mine.arch_hash}), not for {identity.name!r} (input {list(identity.input_shape)}, architecture "
                f"{identity.arch_hash}); search or write a policy for this model"
            )
        unknown = sorted(set(self.ratios) - set(group_names))
        if unknown:
            raise PolicyMismatchError(
                f"policy names groups this model does not have: {', '.join(map(repr, unknown[:5]))}"
            )

    def check_complete(self, group_names: Sequence[str], allow_partial: bool = False) -> tuple[str, ...]:
        """Checks that the policy gives every group of the model a ratio.

        Args:
            group_names: The model's prunable groups, in order.
            allow_partial: Accept a policy that leaves groups out; they stay dense.

        Returns:
            The groups the policy leaves out, in model order (empty when it is complete).

        Raises:
            PolicyError: When groups are missing and ``allow_partial`` is false.
        """
        missing = tuple(name for name in group_names if name not in self.ratios)
        if missing and not allow_partial:
            raise PolicyError(
                f"the policy leaves out {len(missing)} of the model's {len(group_names)} groups "
                f"({_listed(missing)}); give each a ratio (0.0 keeps a group dense), or allow a partial policy "
                "(amc prune --allow-partial) to keep them dense"
            )
        return missing

    def completed(self, group_names: Sequence[str]) -> Policy:
        """This policy with ratio 0.0 (dense) for every group in ``group_names`` it leaves out."""
        ratios = {name: float(self.ratios.get(name, 0.0)) for name in group_names}
        ratios.update({name: float(r) for name, r in self.ratios.items() if name not in ratios})
        return dataclasses.replace(self, ratios=ratios)


def _listed(names: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b' and 3 more``."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_policy(path: str | Path) -> Policy:
    """Reads and validates a policy JSON file.

    Raises:
        PolicyError: When the path is missing, a directory, a dangling link, empty, not UTF-8, not JSON
            (NaN, Infinity and keys given twice are refused too), not a JSON object at the top, or any
            field is invalid; the message names the file and the field.
    """
    p, text = read_input_text(path, "policy file", PolicyError, "a policy .json file")
    try:
        data = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except _BadJson as exc:
        raise PolicyError(f"policy file {p} is not valid policy JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(
            f"policy file {p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise PolicyError(f"policy file {p} nests too deeply to be a policy") from None
    if _depth(data) > MAX_NESTING:
        raise PolicyError(f"policy file {p} nests more than {MAX_NESTING} levels deep; a policy nests three")
    try:
        return Policy.from_dict(data)
    except PolicyError as exc:
        raise retyped(exc, f"policy file {p}: {exc}") from None


# --------------------------------------------------------------------------- JSON reading
class _BadJson(ValueError):
    """Raised by the JSON hooks below; load_policy turns it into a PolicyError."""


def _no_constant(name: str) -> Any:
    raise _BadJson(f"{name} is not a number JSON allows; write a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJson(f"number {text[:40]} is too large to be finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise _BadJson(f"integer {text[:40]}{'...' if len(text) > 40 else ''} is too large (at most 19 digits)")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJson(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


# --------------------------------------------------------------------------- field checks
def _is_number(value: Any) -> bool:
    """A real, finite number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _required(data: Mapping, key: str, where: str = "") -> Any:
    if key not in data:
        fields = {
            "model": "the dense model it was made for: name, input_shape, num_classes, arch_hash",
            "ratios": "an object of group name -> pruning ratio",
        }
        what = f" ({fields[key]})" if key in fields else ""
        raise PolicyError(f"policy field {where}{key} is missing{what}")
    return data[key]


def _no_unknown(data: Mapping, known: Sequence[str], where: str) -> None:
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        raise PolicyError(f"unknown field {show(unknown[0])} in {where}; valid fields: {', '.join(known)}")


def _text(value: Any, path: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise PolicyError(
            f"policy field {path} must be a {'' if allow_empty else 'non-empty '}string, got {show(value)}"
        )
    return value


def _integer(value: Any, path: str, minimum: int) -> int:
    if type(value) is not int or not minimum <= value < MAX_INT:
        raise PolicyError(f"policy field {path} must be an integer >= {minimum}, got {show(value)}")
    return value


def _number(value: Any, path: str) -> float:
    if not isinstance(value, (int, float)) or not _is_number(value):
        raise PolicyError(f"policy field {path} must be a finite number, got {show(value)}")
    return float(value)


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise PolicyError(f"policy field {path} must be an object, got {show(value)}")
    return value


def _identity(value: Any) -> ModelIdentity:
    m = _mapping(value, "model")
    _no_unknown(m, _MODEL_FIELDS, "model")
    shape = _required(m, "input_shape", "model.")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        raise PolicyError(
            f"policy field model.input_shape must be a list of 1 to 8 positive integers, got {show(shape)}"
        )
    return ModelIdentity(
        _text(_required(m, "name", "model."), "model.name"),
        tuple(_integer(v, f"model.input_shape[{i}]", 1) for i, v in enumerate(shape)),
        _integer(_required(m, "num_classes", "model."), "model.num_classes", 1),
        _text(_required(m, "arch_hash", "model."), "model.arch_hash"),
    )


def _ratios(value: Any) -> dict[str, float]:
    ratios = _mapping(value, "ratios")
    if not ratios:
        raise PolicyError("policy field ratios is empty; give each group of the model a ratio (group name -> ratio)")
    out = {}
    for name, ratio in ratios.items():
        path = f"ratios[{name!r}]"
        if not isinstance(ratio, (int, float)) or not _is_number(ratio) or not 0.0 <= ratio < 1.0:
            raise PolicyError(
                f"policy field {path} is {show(ratio)}; ratios must be numbers in [0, 1) "
                "(the fraction of channels removed; 0 keeps the group dense)"
            )
        out[name] = float(ratio)
    return out


def _target(value: Any) -> Target:
    t = _mapping(value, "target")
    _no_unknown(t, _TARGET_FIELDS, "target")
    metric = _text(_required(t, "metric", "target."), "target.metric")
    return Target(metric, _number(_required(t, "ratio", "target."), "target.ratio"))


def _numbers(value: Any, path: str) -> dict[str, float]:
    return {k: _number(v, f"{path}[{k!r}]") for k, v in _mapping(value, path).items()}


def _strings(value: Any, path: str) -> dict[str, str]:
    return {k: _text(v, f"{path}[{k!r}]", allow_empty=True) for k, v in _mapping(value, path).items()}
