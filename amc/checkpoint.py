"""Saved models: architecture identity + policy + pruning history + state_dict, no arbitrary pickles.

The file is a ``torch.save`` of plain dicts, lists, strings, numbers and tensors, read back with
``torch.load(weights_only=True)``; the model is rebuilt from the registry, the pruning history is
replayed onto it and then the state_dict is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from amc.config import check_input_path, retyped, show
from amc.errors import AmcError, ModelFileError, PolicyError
from amc.files import atomic_path
from amc.models import ModelSpec, create_model
from amc.policy import Policy
from amc.pruning import History, replay_history
from amc.train import state_copy

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
    """Saves ``model`` (dense, or pruned with the ``history`` that made it) atomically.

    Raises:
        ModelFileError: When ``model`` does not have the shapes of ``spec``'s dense model with ``history``
            replayed (a pruned model saved without its history could not be loaded again); nothing is written.
    """
    history = list(history) if history is not None else []
    _check_saveable(model, spec, history)
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "spec": {
            "name": spec.name,
            "in_channels": spec.in_channels,
            "num_classes": spec.num_classes,
            "input_size": spec.input_size if isinstance(spec.input_size, int) else list(spec.input_size),
        },
        "policy": policy.to_dict() if policy is not None else None,
        "history": [[n, bool(o), list(idx)] for n, o, idx in history],
        "state_dict": state_copy(model, "cpu"),  # with its _metadata: models that read module versions reload
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _check_saveable(model: nn.Module, spec: ModelSpec, history: History) -> None:
    """Raises unless ``spec``'s dense model with ``history`` replayed has ``model``'s parameter shapes."""
    from amc.models import create_model
    from amc.pruning import replay_history

    skeleton = create_model(spec)
    try:
        replay_history(skeleton, spec.example_inputs(), history)
    except Exception as exc:  # Torch-Pruning raises many types for a history that does not fit
        raise ModelFileError(
            f"cannot save: the pruning history does not fit model {spec.name!r}: {type(exc).__name__}"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        differs = next((k for k in actual if expected.get(k) != actual[k]), None) or next(
            iter(expected.keys() - actual.keys())
        )
        what = (
            "pass the pruning history (amc.prune_with_policy(...).history)"
            if not history
            else "the history does not match the model"
        )
        raise ModelFileError(
            f"cannot save: the model is not {spec.name!r} {'dense' if not history else 'pruned by the given history'} "
            f"({differs}: {actual.get(differs)} vs {expected.get(differs)}); {what}"
        )


_EXPECTED = "a model .pt file (model.pt from `amc train` or `amc prune`)"
_PAYLOAD_KEYS = ("format", "format_version", "spec", "policy", "history", "state_dict")
_SPEC_LIMITS = {"in_channels": 4096, "num_classes": 1_000_000, "input_size": 8192}
"""Upper bounds of a stored model spec (a larger value is a corrupt file, not a model to build)."""


def _read(path: Path) -> dict:
    if not os.path.lexists(path):
        raise ModelFileError(f"model file {path} does not exist; train one with `amc train` or pass the right path")
    check_input_path(path, "model file", ModelFileError, _EXPECTED, max_bytes=None)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        first = " ".join(str(exc).split())[:200]
        raise ModelFileError(f"{path} is not a readable model file: {type(exc).__name__}: {first}") from None
    if isinstance(payload, dict) and isinstance(payload.get("format"), str) and payload["format"] == MODEL_FORMAT:
        return _checked(payload, path)
    if (
        isinstance(payload, dict)
        and payload
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    ):
        return {"state_dict": payload}  # a bare state_dict
    raise ModelFileError(f"{path} is not an amc model file or a state_dict")


def _bad(path: Path, field: str, expected: str, value: object) -> ModelFileError:
    return ModelFileError(
        f"model file {path}: field {field} must be {expected}, got {show(value)}; the file is "
        "damaged or was not written by amc-search, so save the model again"
    )


def _checked(payload: dict, path: Path) -> dict:
    """Validates every field of an amc model file before anything is built from it."""
    unknown = sorted((k for k in payload if k not in _PAYLOAD_KEYS), key=str)
    if unknown:
        raise ModelFileError(
            f"model file {path}: unknown field {show(unknown[0])}; valid fields: {', '.join(_PAYLOAD_KEYS)}"
        )
    version = payload.get("format_version")
    if type(version) is not int or version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"model file {path}: format version {show(version)} is not supported "
            f"(this version reads {MODEL_FORMAT_VERSION})"
        )
    _check_spec(payload.get("spec"), path)
    _check_history(payload.get("history", []), path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _bad(path, "state_dict", "a mapping of parameter name to tensor", type(state).__name__)
    policy = payload.get("policy")
    if policy is not None:
        try:
            payload = {**payload, "policy": Policy.from_dict(policy)}
        except PolicyError as exc:
            raise ModelFileError(f"model file {path}: the policy inside is invalid: {exc}") from None
    return payload


def _check_spec(spec: object, path: Path) -> None:
    if not isinstance(spec, dict) or set(spec) != {"name", *_SPEC_LIMITS}:
        raise _bad(path, "spec", "a mapping of name, in_channels, num_classes, input_size", spec)
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise _bad(path, "spec.name", "a registered model name", spec["name"])
    for key, limit in _SPEC_LIMITS.items():
        value = spec[key]
        if key == "input_size" and isinstance(value, list) and 1 <= len(value) <= 3:
            if all(type(v) is int and 1 <= v <= limit for v in value):
                continue
            raise _bad(path, f"spec.{key}", f"a side or a list of 1 to 3 sizes, each an integer in [1, {limit}]", value)
        if type(value) is not int or not 1 <= value <= limit:
            raise _bad(path, f"spec.{key}", f"an integer in [1, {limit}]", value)


def _check_history(history: object, path: Path) -> None:
    if not isinstance(history, list):
        raise _bad(path, "history", "a list of [module name, is output channels, [indices]]", history)
    for i, step in enumerate(history):
        ok = (
            isinstance(step, (list, tuple))
            and len(step) == 3
            and isinstance(step[0], str)
            and isinstance(step[1], bool)
        )
        ok = ok and isinstance(step[2], (list, tuple)) and all(type(j) is int and 0 <= j < 2**31 for j in step[2])
        if not ok:
            raise _bad(path, f"history[{i}]", "[module name, true/false, [channel indices >= 0]]", step)


def load_model(path: str | Path, spec: ModelSpec | None = None, dense: nn.Module | None = None) -> SavedModel:
    """Loads a saved model; ``spec`` is needed only for a bare state_dict, ``dense`` for a custom model.

    Args:
        path: File written by :func:`save_model` (or a bare state_dict of a registry model).
        spec: Overrides / supplies the model identity (required for a bare state_dict).
        dense: A freshly built dense instance of a model that is not in the registry.

    Raises:
        ModelFileError: When the file is missing, unreadable, not a model file, has an invalid field, or
            its pruning history or weights do not fit the model it names.
    """
    p = Path(path)
    payload = _read(p)
    if "spec" in payload:
        s = payload["spec"]
        stored = ModelSpec(s["name"], s["in_channels"], s["num_classes"], s["input_size"])
        if spec is not None and spec != stored:
            raise ModelFileError(
                f"{p} holds {stored}, not the requested {spec}; drop --model/--data or pass the matching ones"
            )
        spec = stored
    if spec is None:
        raise ModelFileError(f"{p} is a bare state_dict; say which model it is (--model and --data)")
    try:
        model = dense if dense is not None else create_model(spec)
    except AmcError as exc:
        raise retyped(exc, f"model file {p}: {exc}") from None
    history = [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in payload.get("history", [])]
    _replay(p, model, spec, history)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{p} does not fit model {spec.name!r} ({spec.input_shape}): {first}") from None
    model.eval()
    return SavedModel(model, spec, payload.get("policy"), history)


def _replay(path: Path, model: nn.Module, spec: ModelSpec, history: History) -> None:
    try:
        replay_history(model, spec.example_inputs(), history)
    except AmcError:
        raise
    except Exception as exc:  # Torch-Pruning raises many types for a history that does not fit
        first = " ".join(str(exc).split())[:200]
        raise ModelFileError(
            f"model file {path}: its pruning history does not fit model {spec.name!r}: {type(exc).__name__}: {first}"
        ) from None
