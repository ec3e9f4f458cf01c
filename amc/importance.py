"""Per-channel importance of every group of a dense model, as the pruning criterion ranks it.

Used by the ``global`` baseline (one threshold over every group's channels, as Torch-Pruning's global
pruning) and available from Python. The scores are the criterion's own (Torch-Pruning normalises each
group's scores by their mean, which makes them comparable across groups), so a channel ranked low here is
the channel :func:`amc.pruning.prune_channels` removes first.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import ConfigError
from amc.groups import PRUNABLE_TYPES, ModelGraph
from amc.pruning import CRITERIA, DEFAULT_CRITERION, _accumulate_gradients, _group_name


def group_importance(
    model: nn.Module,
    graph: ModelGraph,
    criterion: str = DEFAULT_CRITERION,
    calib_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Importance of each channel of every prunable group (group name -> 1-D tensor, one per channel).

    Args:
        model: The dense model (left unchanged).
        graph: Its traced groups.
        criterion: Criterion name from :data:`amc.pruning.CRITERIA`.
        calib_batch: (inputs, targets) for gradient-based criteria.
    """
    crit = CRITERIA.get(criterion)
    work = copy.deepcopy(model).eval()
    if crit.needs_batch and calib_batch is None:
        raise ConfigError(f"criterion {criterion!r} needs a calibration batch of (inputs, targets)")
    if crit.needs_gradients:
        _accumulate_gradients(work, calib_batch)
    importance = crit.importance(work, calib_batch)
    names = {id(m): n for n, m in work.named_modules()}
    dg = tp.DependencyGraph().build_dependency(work, graph.example_inputs, verbose=False)
    classifier = work.get_submodule(graph.classifier)
    scores: dict[str, torch.Tensor] = {}
    for group in dg.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_TYPES):
        name = _group_name(group.items, names, graph.order)
        if name is None or name not in graph.names:
            continue
        with torch.no_grad():
            value = importance(group)
            if value is None:  # e.g. bn_scale on a group without BatchNorm: L1, as the pruning does
                value = tp.importance.GroupMagnitudeImportance(p=1)(group)
        scores[name] = value.detach().float().cpu()
    missing = sorted(set(graph.names) - set(scores))
    if missing:
        raise ConfigError(
            f"no importance scores for groups {', '.join(missing)}; the model changed since it was traced"
        )
    return scores
