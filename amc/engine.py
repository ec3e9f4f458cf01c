"""The engine's high-level operations: build a workspace, apply policies, prune + fine-tune, report.

Everything here is usable without the search (``envs`` / ``agents``): a user applying an exported
policy needs only this package.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from amc.cost import LatencyConfig, count_cost, count_nonzero_params, measure_latency
from amc.data import DataBundle, DataConfig, load_data
from amc.errors import BudgetError, ConfigError
from amc.groups import ModelGraph
from amc.models import InputSize, ModelSpec, create_model
from amc.policy import ModelIdentity, Policy, Target
from amc.pruning import (
    DEFAULT_CRITERION,
    History,
    PruneResult,
    build_graph,
    kept_channels,
    prune_channels,
    sparsify,
    widths_for,
)
from amc.retrain import Retraining
from amc.train import (
    CALIBRATION_BATCH_SIZE,
    FINETUNE_LR,
    Distillation,
    FinetuneReport,
    draw_calibration,
    evaluate,
    finetune,
    recalibrate_bn_seeded,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    """A dense model with its data, traced groups and identity."""

    spec: ModelSpec
    data: DataBundle
    model: nn.Module
    graph: ModelGraph
    identity: ModelIdentity

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return self.spec.example_inputs(batch)


def spec_for(model_name: str, data: DataBundle) -> ModelSpec:
    return ModelSpec(model_name, data.in_channels, data.num_classes, data.input_size)


def build_workspace(model_name: str, data_config: DataConfig, checkpoint: str | None = None) -> Workspace:
    """Builds data and model (loading ``checkpoint`` if given) and traces the dependency groups."""
    from amc.checkpoint import load_model

    data = load_data(data_config)
    spec = spec_for(model_name, data)
    if checkpoint:
        saved = load_model(checkpoint, spec=spec)
        if saved.history:
            raise ConfigError(f"{checkpoint} holds a pruned model; pass the dense checkpoint instead")
        model = saved.model
    else:
        model = create_model(spec)
    model.eval()
    graph = build_graph(model, spec.example_inputs())
    return Workspace(spec, data, model, graph, identity_of(spec, model))


def workspace_for(
    model: nn.Module,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader,
    test: Dataset | DataLoader,
    name: str = "custom",
    data_name: str = "custom",
    selection: Dataset | DataLoader | None = None,
) -> Workspace:
    """A workspace over your own dense ``model`` and data, for :func:`agents.search.run_search` (``workspace=``).

    Args:
        model: The trained dense model (any Torch-Pruning-traceable classifier).
        train: Training split (BatchNorm re-estimation, calibration): a Dataset of (input, label) or a
            DataLoader over one; inputs are (C, L) signals, (C, H, W) images (square or not) or (C, D, H, W)
            volumes.
        val: Search-val split (the search's reward is measured on it).
        test: Test split (the final evaluation of the best policy).
        name: Model name written into policies and MLflow runs.
        data_name: Data set name for reports.
        selection: Selection split, disjoint from the others (optional): the search re-ranks its best policies
            on it at the end (``SearchConfig.selection_top_k``).

    Raises:
        ConfigError: When the inputs are not (C, L), (C, H, W) or (C, D, H, W) tensors, or a split is empty.
    """
    splits = [s.dataset if isinstance(s, DataLoader) else s for s in (train, val, test)]
    for split, label in zip(splits, ("train", "val", "test")):
        if len(split) == 0:
            raise ConfigError(f"the {label} split is empty")
    channels, size = input_extent(splits[0][0][0])
    num_classes = _class_count(model.eval(), splits[0][0][0].unsqueeze(0))
    if selection is not None:
        selection = selection.dataset if isinstance(selection, DataLoader) else selection
        if len(selection) == 0:
            raise ConfigError("the selection split is empty; pass None for no selection split")
    data = DataBundle(splits[0], splits[1], splits[2], channels, num_classes, size, data_name, selection)
    spec = ModelSpec(name, channels, num_classes, size)
    graph = build_graph(model, spec.example_inputs())
    return Workspace(spec, data, model, graph, identity_of(spec, model))


def _class_count(model: nn.Module, batch: torch.Tensor) -> int:
    """The classifier outputs of ``model`` on ``batch``; a ConfigError when the model does not run on it."""
    try:
        with torch.no_grad():
            return int(model(batch).shape[-1])
    except Exception as exc:  # whatever the model raises: say which inputs it was given
        raise ConfigError(
            f"the model does not run on the training inputs (a batch of shape {tuple(batch.shape)}): "
            f"{type(exc).__name__}: {str(exc)[:200]}; pass inputs of the shape the model takes"
        ) from exc


def input_extent(sample: object) -> tuple[int, InputSize]:
    """Channels and input size (:data:`amc.models.InputSize`) of one input without its batch dimension.

    A square image gives its side; a 1-D signal ``(C, L)``, a non-square image ``(C, H, W)`` and a volume
    ``(C, D, H, W)`` give the sizes of their dimensions.

    Raises:
        ConfigError: When ``sample`` is not a tensor of 2 to 4 dimensions.
    """
    if not isinstance(sample, torch.Tensor) or not 2 <= sample.dim() <= 4 or 0 in sample.shape:
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise ConfigError(
            "inputs must be tensors of (C, L) signals, (C, H, W) images or (C, D, H, W) volumes, without the batch "
            f"dimension; got {shape}"
        )
    spatial = tuple(int(s) for s in sample.shape[1:])
    square = len(spatial) == 2 and spatial[0] == spatial[1]
    return int(sample.shape[0]), spatial[0] if square else spatial


def identity_of(spec: ModelSpec, model: nn.Module) -> ModelIdentity:
    return ModelIdentity.of(model, spec.input_shape, spec.num_classes, spec.name)


def uniform_policy(
    graph: ModelGraph,
    identity: ModelIdentity,
    ratio: float,
    criterion: str = DEFAULT_CRITERION,
    round_to: int = 1,
    granularity: str = "channel",
) -> Policy:
    """The same pruning ratio for every group: the baseline every search is compared against."""
    return Policy(identity, {g.name: float(ratio) for g in graph}, granularity, criterion, round_to)


def make_policy(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: Mapping[str, float] | float,
    name: str | None = None,
    criterion: str = DEFAULT_CRITERION,
    round_to: int = 1,
) -> Policy:
    """A policy for your own dense ``model``: per-group ratios (by group name) or one ratio for all.

    Groups that ``ratios`` leaves out are written into the policy with ratio 0.0 (dense), explicitly.
    """
    graph = build_graph(model, example_inputs)
    with torch.no_grad():
        was_training = model.training
        num_classes = int(model.eval()(example_inputs[:1]).shape[-1])
        model.train(was_training)
    identity = ModelIdentity.of(model, tuple(example_inputs.shape[1:]), num_classes, name)
    if isinstance(ratios, (int, float)):
        ratios = {g.name: float(ratios) for g in graph}
    unknown = sorted(set(ratios) - set(graph.names))
    if unknown:
        raise ConfigError(f"unknown group names {unknown[:3]}; the model's groups are: {', '.join(graph.names)}")
    return Policy(identity, dict(ratios), "channel", criterion, round_to).completed(graph.names)


def cost_ratio(graph: ModelGraph, widths: Mapping[str, int], metric: str) -> float:
    """FLOPs or params of ``widths`` as a fraction of the dense model."""
    cost = graph.estimate(widths)
    if metric == "flops":
        return cost.flops / graph.dense_cost.flops
    if metric == "params":
        return cost.params / graph.dense_cost.params
    raise ConfigError(f"cost metric {metric!r} has no analytic estimate; use flops or params")


def uniform_ratio_for(graph: ModelGraph, target: Target, round_to: int = 1, max_ratio: float = 0.95) -> float:
    """The smallest uniform ratio whose exact cost meets ``target`` (bisection on the exact count)."""

    def meets(r: float) -> bool:
        return cost_ratio(graph, widths_for(graph, {g.name: r for g in graph}, round_to), target.metric) <= target.ratio

    if not meets(max_ratio):
        raise BudgetError(
            f"{target.metric} target {target.ratio} is out of reach even at ratio {max_ratio} everywhere; "
            "raise the target or the maximum ratio"
        )
    return smallest_ratio(meets, 0.0, max_ratio)


def smallest_ratio(meets: Callable[[float], bool], low: float, high: float) -> float:
    """The smallest ratio in [low, high] for which the monotone ``meets`` holds (``meets(high)`` must hold).

    Bisection on the exact count; shared by the engine's and the environment's uniform baselines.
    """
    if meets(low):
        return low
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high


def prune_with_policy(
    model: nn.Module,
    policy: Policy,
    example_inputs: torch.Tensor,
    calib_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    graph: ModelGraph | None = None,
    allow_partial: bool = False,
) -> PruneResult:
    """Prunes a copy of the dense ``model`` by ``policy`` (channels physically removed, or weights zeroed for
    the sparse granularities) and returns it with its widths and pruning history.

    Save it with ``amc.save_model(path, result.model, spec, policy, result.history)``: the history is what
    lets :func:`amc.load_model` rebuild the pruned architecture.

    Args:
        allow_partial: Accept a policy that leaves groups out (they stay dense); refused otherwise.

    Raises:
        PolicyMismatchError: when the policy was made for another model.
        PolicyError: when the policy leaves groups out and ``allow_partial`` is false.
    """
    graph = graph or build_graph(model, example_inputs)
    identity = ModelIdentity.of(model, tuple(example_inputs.shape[1:]), policy.model.num_classes, policy.model.name)
    policy.check_matches(identity, graph.names)
    policy.check_complete(graph.names, allow_partial)
    if policy.granularity != "channel":
        return PruneResult(sparsify(model, graph, policy.ratios, policy.granularity), graph.dense_widths(), [])
    return prune_channels(
        model, graph, widths_for(graph, policy.ratios, policy.round_to), policy.criterion, calib_batch
    )


def apply_policy(
    model: nn.Module,
    policy: Policy,
    example_inputs: torch.Tensor,
    calib_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    graph: ModelGraph | None = None,
    allow_partial: bool = False,
) -> nn.Module:
    """The pruned copy of :func:`prune_with_policy` alone (use that one to save the model: it gives the history)."""
    return prune_with_policy(model, policy, example_inputs, calib_batch, graph, allow_partial).model


@dataclass(frozen=True)
class FinetuneSchedule:
    """How a policy is applied and recovered.

    Every fine-tuning round evaluates the search-val split before training and after each epoch and
    keeps the best weights (the pruned starting point included), so it never returns a worse model.

    Attributes:
        epochs: Fine-tuning epochs in total (split evenly over the rounds when iterative).
        iterative: Rounds of pruning part of the way, each followed by fine-tuning (1: one-shot).
        lr: Peak fine-tuning learning rate.
        lr_rewind: Rewind to the training learning rate (``train_lr``) instead of ``lr``.
        train_lr: The dense model's training learning rate, used by ``lr_rewind``.
        bn_batches: Training batches for BatchNorm recalibration after each pruning step (0: off).
        seed: Seed of the data order.
        warmup: Fraction of each round's steps spent on the linear learning-rate warm-up.
        device: Torch device of the fine-tuning (pruning, BN recalibration and evaluation stay on the CPU).
        distill: Fine-tune with the dense model as a teacher (:class:`amc.train.Distillation`).
        distill_weight: Weight of the teacher's term in [0, 1] (0: labels only).
        distill_temperature: Softening temperature of the teacher's and the student's outputs.
        retrain: Restart the pruned architecture instead of fine-tuning it (weight rewinding or from scratch,
            :mod:`amc.retrain`); its own schedule replaces ``epochs``, ``lr`` and the warm-up. One-shot only.
    """

    epochs: int = 5
    iterative: int = 1
    lr: float = FINETUNE_LR
    lr_rewind: bool = False
    train_lr: float = 0.1
    bn_batches: int = 8
    seed: int = 0
    warmup: float = 0.1
    device: str = "cpu"
    distill: bool = False
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    retrain: Retraining | None = None

    def __post_init__(self) -> None:
        if self.retrain is not None and (self.iterative > 1 or self.lr_rewind):
            raise ConfigError(
                "weight rewinding / from-scratch retraining is one-shot with its own schedule; drop --iterative "
                "and --lr-rewind"
            )
        if self.iterative < 1:
            raise ConfigError(f"--iterative must be >= 1 (1 is one-shot), got {self.iterative}")
        if self.epochs < 0:
            raise ConfigError(f"fine-tune epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"fine-tune learning rate must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warm-up must be a fraction of the steps in [0, 1), got {self.warmup}")

    @property
    def peak_lr(self) -> float:
        """The learning rate fine-tuning uses: ``train_lr`` when rewinding, else ``lr``."""
        return self.train_lr if self.lr_rewind else self.lr

    def round_epochs(self) -> list[int]:
        """Fine-tuning epochs of each round (the remainder goes to the first rounds)."""
        base, extra = divmod(self.epochs, self.iterative)
        return [base + (1 if i < extra else 0) for i in range(self.iterative)]


def workspace_calibration(
    ws: Workspace, seed: int, bn_batches: int
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The BatchNorm calibration inputs and the gradient criteria's batch that a search with ``env.seed = seed``
    scores its policies with (:func:`amc.train.draw_calibration`), so ``amc prune`` reproduces its figures."""
    loader = ws.data.loader("train", CALIBRATION_BATCH_SIZE, shuffle=True, seed=seed)
    calib, grad = draw_calibration(loader, bn_batches, gradient_batch=True)
    assert grad is not None  # drawn when asked for
    return calib, grad


@dataclass(frozen=True)
class _Splits:
    """The loaders one prune-and-fine-tune run uses."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    calib: list[torch.Tensor]
    calib_batch: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def of(cls, ws: Workspace, seed: int, bn_batches: int) -> _Splits:
        calib, calib_batch = workspace_calibration(ws, seed, bn_batches)
        return cls(
            ws.data.loader("train", 64, shuffle=True, seed=seed),
            ws.data.loader("val", 256),
            ws.data.loader("test", 256),
            calib,
            calib_batch,
        )


def _step_widths(graph: ModelGraph, final: Mapping[str, int], step: int, steps: int) -> dict[str, int]:
    """Widths after ``step`` of ``steps`` rounds: the removed channels grow linearly to ``final``."""
    return {g.name: g.channels - (g.channels - final[g.name]) * step // steps for g in graph}


def prune_and_finetune(
    ws: Workspace, policy: Policy, schedule: FinetuneSchedule, progress: bool = True, label: str = "fine-tune"
) -> tuple[PruneResult, dict[str, float]]:
    """Applies ``policy`` to the workspace's dense model (one-shot or iterative) and fine-tunes.

    Fine-tuning selects its best epoch on the search-val split (never test) and never returns weights
    that are worse there than the pruned starting point. ``label`` names the fine-tuning in the progress lines.

    Returns:
        The final pruned model and its accuracies: ``top1_before_finetune`` / ``val_top1_before_finetune``
        (test / search-val, after the first pruning step and BN recalibration, before any fine-tuning),
        ``top1`` / ``val_top1`` (test / search-val, at the end) and ``finetune_best_epoch`` (the epoch of
        the last fine-tuning round whose weights were kept; 0: its starting weights).
    """
    policy.check_matches(ws.identity, ws.graph.names)
    policy.check_complete(ws.graph.names)  # amc prune --allow-partial completes the policy before this
    splits = _Splits.of(ws, schedule.seed, schedule.bn_batches)
    teacher = copy.deepcopy(ws.model).to(schedule.device) if schedule.distill else None
    if policy.granularity != "channel":
        model = prune_with_policy(ws.model, policy, ws.example_inputs(), splits.calib_batch, ws.graph).model
        before = _accuracies(model, splits)
        model = _restart(model, [], ws, schedule)
        reports = [_recover(model, splits, schedule, schedule.epochs, 0, progress, teacher, label, sparse=True)]
        return PruneResult(model, ws.graph.dense_widths(), []), _finetune_summary(model, splits, before, reports)
    final = widths_for(ws.graph, policy.ratios, policy.round_to)
    model, history, before, reports = ws.model, [], None, []
    for step, epochs in enumerate(schedule.round_epochs(), start=1):
        result = prune_channels(
            model,
            ws.graph,
            _step_widths(ws.graph, final, step, schedule.iterative),
            policy.criterion,
            splits.calib_batch,
        )
        model, history = result.model, history + result.history
        if schedule.bn_batches:
            recalibrate_bn_seeded(model, splits.calib, schedule.seed)
        if before is None:
            before = _accuracies(model, splits)
        model = _restart(model, history, ws, schedule)
        if epochs or schedule.retrain is not None:
            reports.append(_recover(model, splits, schedule, epochs, step, progress, teacher, label))
    return PruneResult(model, final, history), _finetune_summary(model, splits, before, reports)


def _restart(model: nn.Module, history: History, ws: Workspace, schedule: FinetuneSchedule) -> nn.Module:
    """The pruned ``model`` itself, or its architecture restarted as ``schedule.retrain`` says."""
    if schedule.retrain is None:
        return model
    return schedule.retrain.starting_model(model, history, ws.example_inputs())


def _recover(
    model: nn.Module,
    splits: _Splits,
    schedule: FinetuneSchedule,
    epochs: int,
    step: int,
    progress: bool,
    teacher: nn.Module | None,
    label: str = "fine-tune",
    sparse: bool = False,
) -> FinetuneReport:
    """One round of fine-tuning (or retraining) of ``model`` in place on ``schedule.device``, keeping its best epoch."""
    retrain = schedule.retrain
    distill = Distillation(teacher, schedule.distill_weight, schedule.distill_temperature) if teacher else None
    run = finetune_sparse if sparse else finetune
    report = run(
        model.to(schedule.device),
        splits.train,
        retrain.epochs if retrain else epochs,
        retrain.schedule.lr if retrain else schedule.peak_lr,
        seed=schedule.seed + step,
        progress=progress,
        val_loader=splits.val,
        warmup=schedule.warmup,
        distill=distill,
        lr_factor=retrain.lr_factor(len(splits.train)) if retrain else None,
        label=label,
    )
    model.cpu()
    return report


def _accuracies(model: nn.Module, splits: _Splits) -> tuple[float, float]:
    """(test, search-val) top-1 of ``model``."""
    return evaluate(model, splits.test), evaluate(model, splits.val)


def _finetune_summary(
    model: nn.Module, splits: _Splits, before: tuple[float, float], reports: list[FinetuneReport]
) -> dict[str, float]:
    test, val = _accuracies(model, splits)
    best_epoch = reports[-1].best_epoch if reports else 0
    return {
        "top1_before_finetune": before[0],
        "val_top1_before_finetune": before[1],
        "top1": test,
        "val_top1": val,
        "finetune_best_epoch": best_epoch,
    }


def finetune_sparse(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    seed: int,
    progress: bool,
    **kwargs: Any,
) -> FinetuneReport:
    """Fine-tunes a sparse model while keeping its zeroed weights at zero; ``kwargs`` as :func:`amc.train.finetune`'s."""
    masks = [(p, p != 0) for p in model.parameters() if p.dim() > 1]
    hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in masks]
    try:
        report = finetune(model, loader, epochs, lr, seed=seed, progress=progress, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for p, m in masks:
            p.mul_(m)
    return report


def cost_report(ws: Workspace, pruned: nn.Module, latency: LatencyConfig | None) -> dict[str, float]:
    """FLOPs, params (and non-zero params), their ratios to dense, and measured latency."""
    x = ws.example_inputs()
    cost = count_cost(pruned, x)
    dense = ws.graph.dense_cost
    nonzero = count_nonzero_params(pruned)
    report: dict[str, float] = {
        "flops": cost.flops,
        "flops_ratio": cost.flops / dense.flops,
        "params": cost.params,
        "params_ratio": cost.params / dense.params,
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / max(cost.params, 1),
        "dense_flops": dense.flops,
        "dense_params": dense.params,
    }
    if latency is not None:
        report["latency_ms"] = measure_latency(pruned, ws.spec.input_shape, latency)
        report["dense_latency_ms"] = measure_latency(ws.model, ws.spec.input_shape, latency)
        report["latency_ratio"] = report["latency_ms"] / report["dense_latency_ms"]
    return report


__all__ = [
    "FinetuneSchedule",
    "Workspace",
    "apply_policy",
    "build_workspace",
    "cost_ratio",
    "cost_report",
    "identity_of",
    "input_extent",
    "kept_channels",
    "make_policy",
    "prune_and_finetune",
    "spec_for",
    "uniform_policy",
    "uniform_ratio_for",
    "workspace_calibration",
]
