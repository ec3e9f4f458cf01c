"""The policy file: versioned, self-describing JSON holding per-group pruning ratios.

A policy names the dense model it was made for (registry name, input shape, class count and a hash of
the dense architecture), so applying it to another model fails with a message that says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from amc.errors import PolicyError, PolicyMismatchError
from amc.files import write_json_atomic
from amc.pruning import CRITERIA, GRANULARITIES

SCHEMA_VERSION = 1
POLICY_KIND = "amc-policy"
TARGET_METRICS = ("flops", "params", "latency")


def architecture_hash(model: nn.Module) -> str:
    """A short hash of the dense architecture: module names, types and parameter shapes."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__name__};".encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelIdentity:
    """Which dense model a policy or saved model belongs to."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    arch_hash: str

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str | None = None) -> "ModelIdentity":
        return cls(name or f"python:{type(model).__name__}", tuple(input_shape), num_classes, architecture_hash(model))


@dataclass(frozen=True)
class Target:
    """The budget a policy was found for: keep ``ratio`` of the dense ``metric``."""

    metric: str
    ratio: float

    def __post_init__(self) -> None:
        if self.metric not in TARGET_METRICS:
            raise PolicyError(f"target metric {self.metric!r} is unknown; use one of {', '.join(TARGET_METRICS)}")
        if not 0.0 < self.ratio <= 1.0:
            raise PolicyError(f"target ratio {self.ratio} must be in (0, 1] (the fraction of the dense cost kept)")


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
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"granularity {self.granularity!r} is unknown; use one of {', '.join(GRANULARITIES)}")
        if self.criterion not in CRITERIA:
            raise PolicyError(f"criterion {self.criterion!r} is unknown; use one of {', '.join(CRITERIA.names())}")
        if self.round_to < 1:
            raise PolicyError(f"round_to must be >= 1, got {self.round_to}")
        for name, ratio in self.ratios.items():
            if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
                raise PolicyError(f"ratio of group {name!r} is {ratio!r}; ratios must be numbers in [0, 1)")

    def to_dict(self) -> dict:
        body = asdict(self)
        body["model"]["input_shape"] = list(self.model.input_shape)
        body["ratios"] = {k: float(v) for k, v in self.ratios.items()}
        body["measured"] = dict(self.measured)
        body["versions"] = dict(self.versions)
        return {"schema_version": SCHEMA_VERSION, "kind": POLICY_KIND, **body}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Policy":
        """Validates and builds a policy from its JSON form."""
        if not isinstance(data, Mapping) or data.get("kind") != POLICY_KIND:
            raise PolicyError("not an amc policy file (missing \"kind\": \"amc-policy\")")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PolicyError(
                f"policy schema version {data.get('schema_version')!r} is not supported (this version reads {SCHEMA_VERSION})"
            )
        try:
            m = data["model"]
            identity = ModelIdentity(str(m["name"]), tuple(int(v) for v in m["input_shape"]), int(m["num_classes"]), str(m["arch_hash"]))
            target = Target(str(data["target"]["metric"]), float(data["target"]["ratio"])) if data.get("target") else None
            ratios = data["ratios"]
            if not isinstance(ratios, Mapping) or not ratios:
                raise PolicyError("policy has no \"ratios\" object of group name -> ratio")
            return cls(
                identity, dict(ratios), str(data.get("granularity", "channel")), str(data.get("criterion", "l1")),
                int(data.get("round_to", 1)), target, dict(data.get("measured", {})), dict(data.get("versions", {})),
                str(data.get("created", "")),
            )
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"policy file is missing or has a malformed field: {exc}") from None

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
            raise PolicyMismatchError(f"policy names groups this model does not have: {', '.join(unknown[:5])}")


def load_policy(path: str | Path) -> Policy:
    """Reads and validates a policy JSON file."""
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"policy file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy file {p} is not valid JSON: {exc}") from None
    return Policy.from_dict(data)
