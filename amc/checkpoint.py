"""Saved models: architecture identity + policy + pruning history + state_dict, no arbitrary pickles.

The file is a ``torch.save`` of plain dicts, lists, strings, numbers and tensors, read back with
``torch.load(weights_only=True)``; the model is rebuilt from the registry, the pruning history is
replayed onto it and then the state_dict is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from amc.errors import ModelFileError
from amc.files import atomic_path
from amc.models import ModelSpec, create_model
from amc.policy import Policy
from amc.pruning import History, replay_history

MODEL_FORMAT = "amc-model"
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedModel:
    """A model read from disk with what describes it."""

    model: nn.Module
    spec: ModelSpec
    policy: Policy | None
    history: History


def save_model(
    path: str | Path, model: nn.Module, spec: ModelSpec, policy: Policy | None = None, history: History | None = None
) -> Path:
    """Saves ``model`` (dense or pruned) atomically."""
    history = history if history is not None else getattr(model, "amc_pruning_history", [])
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "spec": {"name": spec.name, "in_channels": spec.in_channels, "num_classes": spec.num_classes, "input_size": spec.input_size},
        "policy": policy.to_dict() if policy is not None else None,
        "history": [[n, bool(o), list(idx)] for n, o, idx in history],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; train one with `amc train` or pass the right path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{path} is not a readable model file: {type(exc).__name__}: {exc}") from None
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return payload
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"state_dict": payload}  # a bare state_dict
    raise ModelFileError(f"{path} is not an amc model file or a state_dict")


def load_model(path: str | Path, spec: ModelSpec | None = None, dense: nn.Module | None = None) -> SavedModel:
    """Loads a saved model; ``spec`` is needed only for a bare state_dict, ``dense`` for a custom model.

    Args:
        path: File written by :func:`save_model` (or a bare state_dict of a registry model).
        spec: Overrides / supplies the model identity (required for a bare state_dict).
        dense: A freshly built dense instance of a model that is not in the registry.
    """
    p = Path(path)
    payload = _read(p)
    if "spec" in payload:
        s = payload["spec"]
        stored = ModelSpec(str(s["name"]), int(s["in_channels"]), int(s["num_classes"]), int(s["input_size"]))
        if spec is not None and spec != stored:
            raise ModelFileError(f"{p} holds {stored}, not the requested {spec}; drop --model/--data or pass the matching ones")
        spec = stored
    if spec is None:
        raise ModelFileError(f"{p} is a bare state_dict; say which model it is (--model and --data)")
    model = dense if dense is not None else create_model(spec)
    history = [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in payload.get("history", [])]
    replay_history(model, spec.example_inputs(), history)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{p} does not fit model {spec.name!r} ({spec.input_shape}): {first}") from None
    model.eval()
    model.amc_pruning_history = history
    policy = Policy.from_dict(payload["policy"]) if payload.get("policy") else None
    return SavedModel(model, spec, policy, history)
