"""Which dense model a policy file was made from, as the files written beside it record.

``amc search --out DIR`` writes ``DIR/config.yaml`` (its ``env.checkpoint`` is the dense model searched) next to
``DIR/best_policy.json``; ``amc export --out DIR`` writes ``DIR/export.json``, whose entries name each exported
policy's files and the dense checkpoint of the run it came from. ``amc prune --policy P`` without
``--checkpoint`` reads them to apply the policy to the model it was made from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "export.json"
"""The manifest ``amc export`` writes in its output directory (:data:`amc.service.export.MANIFEST`)."""


@dataclass(frozen=True)
class DenseRecord:
    """A dense checkpoint path recorded for a policy, and the file that records it."""

    checkpoint: Path
    recorded_in: Path


def recorded_dense_model(policy_path: Path) -> DenseRecord | None:
    """The dense model recorded for the policy at ``policy_path`` by ``amc export`` or ``amc search``.

    Args:
        policy_path: A policy JSON file.

    Returns:
        The recorded checkpoint (it may no longer exist) and where it was recorded; None when nothing beside
        the file records one (a hand-written policy, or one copied elsewhere).
    """
    path = policy_path.resolve()
    for record in (_from_export(path, path.parent), _from_export(path, path.parent.parent), _from_search(path)):
        if record is not None:
            return record
    return None


def _from_export(policy: Path, out: Path) -> DenseRecord | None:
    """The checkpoint of ``policy``'s entry in the export manifest of directory ``out``."""
    manifest = out / MANIFEST
    data = _json(manifest)
    if not isinstance(data, dict) or data.get("kind") != "amc-export":
        return None
    relative = str(policy.relative_to(out))
    for entry in data.get("policies") or []:
        if isinstance(entry, dict) and relative in (entry.get("files") or []) and entry.get("checkpoint"):
            return DenseRecord(_absolute(str(entry["checkpoint"]), out), manifest)
    return None


def _from_search(policy: Path) -> DenseRecord | None:
    """``env.checkpoint`` of the search directory holding ``policy`` (it has config.yaml and search.json)."""
    import yaml

    config = policy.parent / "config.yaml"
    if not (policy.parent / "search.json").is_file() or not config.is_file():
        return None
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    env = data.get("env") if isinstance(data, dict) else None
    checkpoint = env.get("checkpoint") if isinstance(env, dict) else None
    return DenseRecord(_absolute(str(checkpoint), policy.parent), config) if checkpoint else None


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _absolute(checkpoint: str, base: Path) -> Path:
    """``checkpoint`` as recorded; a relative one is taken from the working directory, else from ``base``."""
    path = Path(checkpoint).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return base / path


__all__ = ["DenseRecord", "recorded_dense_model"]
