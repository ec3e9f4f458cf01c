"""amc-search: find per-layer pruning ratios with AMC-style reinforcement learning, and apply them.

The engine's Python API (usable with your own model and data loaders)::

    import amc
    groups = amc.prunable_groups(model, example_inputs)
    cost = amc.count_cost(model, example_inputs)
    policy = amc.load_policy("best_policy.json")
    small = amc.apply_policy(model, policy, example_inputs)
    amc.finetune(small, train_loader, epochs=5)
"""

from __future__ import annotations

from torch import nn
import torch

from amc.checkpoint import SavedModel, load_model, save_model
from amc.cost import Cost, count_cost, measure_latency
from amc.engine import apply_policy, make_policy, uniform_policy
from amc.errors import AmcError
from amc.groups import ModelGraph, PrunableGroup
from amc.policy import ModelIdentity, Policy, Target, load_policy
from amc.train import evaluate, finetune, recalibrate_bn

__version__ = "0.1.0"


def prunable_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[PrunableGroup]:
    """The prunable dependency groups of ``model`` in execution order, with stable names."""
    return list(ModelGraph(model, example_inputs))


__all__ = [
    "AmcError", "Cost", "ModelGraph", "ModelIdentity", "Policy", "PrunableGroup", "SavedModel", "Target",
    "apply_policy", "count_cost", "evaluate", "finetune", "load_model", "load_policy", "make_policy", "measure_latency",
    "prunable_groups", "recalibrate_bn", "save_model", "uniform_policy",
]
