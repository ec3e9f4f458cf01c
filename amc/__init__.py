"""amc-search: find per-layer pruning ratios with AMC-style reinforcement learning, and apply them.

The engine's Python API (usable with your own model and data loaders)::

    import amc
    groups = amc.prunable_groups(model, example_inputs)
    cost = amc.count_cost(model, example_inputs)
    policy = amc.load_policy("best_policy.json")
    small = amc.apply_policy(model, policy, example_inputs)
    amc.finetune(small, train_loader, epochs=5)
    result = amc.prune_with_policy(model, policy, example_inputs)     # the pruned copy with its history,
    amc.save_model("small.pt", result.model, spec, policy, result.history)  # which save_model needs

The names below are loaded on first use, so ``import amc`` (and the ``amc`` command line, whose
``--help`` builds only argparse code) does not import torch until the engine is used. The engine never
imports MLflow, Ray or stable-baselines3; the service parts around it live in :mod:`amc.service`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from amc.checkpoint import SavedModel, load_model, save_model
    from amc.cost import Cost, count_cost, measure_latency
    from amc.engine import apply_policy, make_policy, prune_with_policy, uniform_policy
    from amc.errors import AmcError
    from amc.groups import ModelGraph, PrunableGroup
    from amc.policy import ModelIdentity, Policy, Target, load_policy
    from amc.preflight import CheckReport, check
    from amc.train import evaluate, finetune, recalibrate_bn

__version__ = "0.1.0"

_API: dict[str, str] = {
    "SavedModel": "amc.checkpoint",
    "load_model": "amc.checkpoint",
    "save_model": "amc.checkpoint",
    "Cost": "amc.cost",
    "count_cost": "amc.cost",
    "measure_latency": "amc.cost",
    "apply_policy": "amc.engine",
    "prune_with_policy": "amc.engine",
    "make_policy": "amc.engine",
    "uniform_policy": "amc.engine",
    "AmcError": "amc.errors",
    "CheckReport": "amc.preflight",
    "check": "amc.preflight",
    "ModelGraph": "amc.groups",
    "PrunableGroup": "amc.groups",
    "ModelIdentity": "amc.policy",
    "Policy": "amc.policy",
    "Target": "amc.policy",
    "load_policy": "amc.policy",
    "evaluate": "amc.train",
    "finetune": "amc.train",
    "recalibrate_bn": "amc.train",
}


def __getattr__(name: str) -> Any:
    """Loads an API name from its module on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'amc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


def prunable_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[PrunableGroup]:
    """The prunable dependency groups of ``model`` in execution order, with stable names."""
    from amc.pruning import build_graph

    return list(build_graph(model, example_inputs))


__all__ = [
    "AmcError",
    "CheckReport",
    "Cost",
    "ModelGraph",
    "ModelIdentity",
    "Policy",
    "PrunableGroup",
    "SavedModel",
    "Target",
    "apply_policy",
    "check",
    "count_cost",
    "evaluate",
    "finetune",
    "load_model",
    "load_policy",
    "make_policy",
    "measure_latency",
    "prunable_groups",
    "prune_with_policy",
    "recalibrate_bn",
    "save_model",
    "uniform_policy",
]
