"""Pruning: apply per-group ratios to a model and get a physically smaller copy (or a sparse one).

Channel pruning removes whole channels of each dependency group (Torch-Pruning does the surgery);
which channels go is decided by an importance criterion from :data:`CRITERIA`. Two other
granularities exist for size targets: ``unstructured`` (fine-grained magnitude) and ``nm`` (2:4); they
zero weights in place, so they change the non-zero parameter count but make no latency claim.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from amc.apoz import apoz_importance
from amc.cost import count_cost
from amc.errors import ConfigError, TraceError
from amc.groups import (
    NORM_TYPES,
    PRUNABLE_TYPES,
    ModelGraph,
    PrunableGroup,
    all_groups,
    architecture_hash,
    is_depthwise,
)
from amc.registry import Registry
from amc.time_limit import TimeLimit

GRANULARITIES = ("channel", "unstructured", "nm")
History = list[tuple[str, bool, list[int]]]


@dataclass(frozen=True)
class Criterion:
    """An importance criterion: ranks the channels of a group, lowest first to go.

    Attributes:
        name: Registry name.
        factory: Builds the Torch-Pruning importance object.
        needs_gradients: Whether the criterion reads gradients (a calibration batch is then required).
        from_activations: For an activation-based criterion: measures the model on a batch of inputs and returns
            the importance (``factory`` is then None).
    """

    name: str
    factory: Callable[[], tp.importance.Importance] | None
    needs_gradients: bool = False
    from_activations: Callable[[nn.Module, torch.Tensor], tp.importance.Importance] | None = None

    @property
    def needs_batch(self) -> bool:
        """Whether the criterion reads a calibration batch (gradients or activations)."""
        return self.needs_gradients or self.from_activations is not None

    def importance(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tp.importance.Importance:
        """The Torch-Pruning importance for ``model`` (the copy that will be pruned; its gradients already
        accumulated for a gradient-based criterion); an activation-based one is measured on ``batch``'s inputs."""
        if self.from_activations is not None:
            return self.from_activations(model, _required_batch(self.name, batch)[0])
        assert self.factory is not None  # every registered criterion has one of the two
        return self.factory()


CRITERIA: Registry[Criterion] = Registry("importance criterion")
DEFAULT_CRITERION = "l2"
"""The criterion used when none is named: measured best on the embedded default (uniform pruning of three
dense ResNet-20 seeds, test top-1 without fine-tuning: l2 71.8% / l1 67.3% / bn_scale 61.2% / taylor 39.3% at
20% FLOPs; see docs/results/search-quality.md and ``experiments/bench/search_quality.py``)."""
CRITERIA.register("l1", Criterion("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1)))
CRITERIA.register("l2", Criterion("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2)))
CRITERIA.register("bn_scale", Criterion("bn_scale", lambda: tp.importance.BNScaleImportance()))
CRITERIA.register("taylor", Criterion("taylor", lambda: tp.importance.GroupTaylorImportance(), True))
CRITERIA.register("apoz", Criterion("apoz", None, from_activations=apoz_importance))


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when ``ratio`` of ``channels`` is removed (at least one, a multiple of ``round_to``).

    The rule is monotone in ``ratio`` and shared by the analytic cost model, the search's budget
    wall and the pruning itself, so all three agree exactly.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio {ratio} is outside [0, 1); it is the fraction of channels removed")
    keep = max(1, int(math.floor((1.0 - ratio) * channels + 0.5)))
    if round_to > 1:
        keep = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
    return min(keep, channels)


def kept_channels_many(channels: int, ratios: np.ndarray, round_to: int = 1) -> np.ndarray:
    """:func:`kept_channels` of every ratio of ``ratios`` (each already in [0, 1)), int64, with the same arithmetic."""
    keep = np.maximum(1, np.floor((1.0 - np.asarray(ratios, dtype=np.float64)) * channels + 0.5).astype(np.int64))
    if round_to > 1:
        keep = np.maximum(round_to, np.floor(keep / round_to + 0.5).astype(np.int64) * round_to)
    return np.minimum(keep, channels)


def group_round_to(group: PrunableGroup, round_to: int = 1) -> int:
    """The channel multiple ``group`` is rounded to: ``round_to`` combined with the group's own multiple.

    A group touching grouped convs keeps a multiple of their ``groups`` (:attr:`PrunableGroup.multiple`),
    so that every conv group keeps the same number of channels.
    """
    return math.lcm(max(1, int(round_to)), group.multiple)


def widths_for(graph: ModelGraph, ratios: Mapping[str, float], round_to: int = 1) -> dict[str, int]:
    """Kept channels per group for per-group pruning ratios (missing groups stay dense).

    Each group is rounded to :func:`group_round_to` (``round_to`` and the group's grouped-conv multiple).
    """
    return {
        g.name: kept_channels(g.channels, float(ratios.get(g.name, 0.0)), group_round_to(g, round_to)) for g in graph
    }


class KeptChannels(NamedTuple):
    """Which channels of the original model one pruned conv / linear module kept.

    Attributes:
        outputs: Indices of the original module's output channels that remain, ascending.
        inputs: Indices of the original module's input channels (features, for a linear) that remain,
            ascending. For a depthwise or grouped conv these are the channels of its input tensor (for a
            depthwise conv equal to ``outputs``), not an index into its weight's second dimension.
    """

    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class PruneResult:
    """A pruned copy of a model, the widths it has and the Torch-Pruning history that reproduces it.

    Attributes:
        model: The physically pruned copy.
        widths: Kept channels per group name.
        history: Torch-Pruning's pruning history (replayable onto the dense model).
        kept: For every conv / linear module that lost input or output channels, the original model's
            channels it kept, so that ``pruned.weight == original.weight[outputs][:, inputs]`` (not for
            depthwise or grouped convs, whose weight holds only one conv group's input channels).
    """

    model: nn.Module
    widths: dict[str, int]
    history: History
    kept: dict[str, KeptChannels] = field(default_factory=dict)


def _group_name(items: list, names: dict[int, str], order: Mapping[str, int]) -> str | None:
    outs = [
        names[id(dep.target.module)]
        for dep, _ in items
        if dep.handler.__name__ == "prune_out_channels" and isinstance(dep.target.module, PRUNABLE_TYPES)
    ]
    return min(outs, key=lambda n: order.get(n, 10**9)) if outs else None


class _KeptTracker:
    """Follows which original channel indices survive each removal Torch-Pruning makes.

    A module can lose channels of one dimension in several groups in sequence (e.g. the input of a
    conv after a concatenation); each group's indices are in the module's current index space, so the
    removals are applied in order to the surviving original indices.
    """

    def __init__(self, names: Mapping[int, str]) -> None:
        self._names = names
        self._kept: dict[str, list[list[int]]] = {}

    def record(self, group: tp.Group) -> None:
        """Records the removals of ``group`` (a pruning group, before ``group.prune()`` is called)."""
        for dep, idxs in group.items:
            module = dep.target.module
            if not isinstance(module, PRUNABLE_TYPES) or id(module) not in self._names:
                continue
            handler = dep.handler.__name__
            if handler not in ("prune_out_channels", "prune_in_channels"):
                continue
            dims = self._dims(module, handler)
            removed = {int(getattr(i, "idx", i)) for i in idxs}  # plain or (idx, root_idx) pairs
            kept = self._kept.setdefault(self._names[id(module)], _original_indices(module))
            for dim in dims:
                kept[dim] = [c for pos, c in enumerate(kept[dim]) if pos not in removed]

    @staticmethod
    def _dims(module: nn.Module, handler: str) -> tuple[int, ...]:
        if is_depthwise(module):
            return (0, 1)  # depthwise: Torch-Pruning removes the same channels on both sides
        return (0,) if handler == "prune_out_channels" else (1,)

    def result(self) -> dict[str, KeptChannels]:
        return {name: KeptChannels(tuple(out), tuple(inp)) for name, (out, inp) in self._kept.items()}


def _original_indices(module: nn.Module) -> list[list[int]]:
    outs = getattr(module, "out_channels", getattr(module, "out_features", 0))
    ins = getattr(module, "in_channels", getattr(module, "in_features", 0))
    return [list(range(int(outs))), list(range(int(ins)))]


def _accumulate_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model.zero_grad()
    inputs, targets = batch
    nn.functional.cross_entropy(model(inputs), targets).backward()


def prune_channels(
    model: nn.Module,
    graph: ModelGraph,
    widths: Mapping[str, int],
    criterion: str = DEFAULT_CRITERION,
    calib_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PruneResult:
    """Returns a copy of ``model`` with every group cut to ``widths[name]`` channels.

    To prune one model to many widths, :class:`ChannelPruner` gives the same results for less.

    Args:
        model: Dense or already pruned model (left unchanged); its module names must match ``graph``.
        graph: The traced groups of the dense architecture (names, execution order, classifier).
        widths: Target channel count per group name; groups not named keep their channels.
        criterion: Importance criterion name from :data:`CRITERIA`.
        calib_batch: (inputs, targets) used by gradient-based criteria.
    """
    crit = CRITERIA.get(criterion)
    pruned = copy.deepcopy(model)
    pruned.eval()
    if crit.needs_gradients:
        _accumulate_gradients(pruned, _required_batch(criterion, calib_batch))
    importance = crit.importance(pruned, calib_batch)
    names = {id(m): n for n, m in pruned.named_modules()}

    def prune() -> PruneResult:
        dg = tp.DependencyGraph().build_dependency(pruned, graph.example_inputs, verbose=False)
        return _prune_groups(pruned, dg, names, graph, widths, importance)

    return TimeLimit(f"pruning {type(model).__name__}", graph.trace_timeout).call(prune)


def _required_batch(
    criterion: str, calib_batch: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if calib_batch is None:
        raise ConfigError(f"criterion {criterion!r} needs a calibration batch of (inputs, targets)")
    return calib_batch


def _prune_groups(
    pruned: nn.Module,
    dg: tp.DependencyGraph,
    names: Mapping[int, str],
    graph: ModelGraph,
    widths: Mapping[str, int],
    importance: tp.importance.Importance,
) -> PruneResult:
    """Cuts every group of ``pruned`` (in place, through its traced graph ``dg``) to ``widths[name]`` channels."""
    tracker = _KeptTracker(names)
    classifier = pruned.get_submodule(graph.classifier)
    for group in all_groups(dg, classifier):
        name = _group_name(group.items, names, graph.order)
        current = len(group.items[0].idxs)
        multiple = graph.group(name).multiple if name is not None else current
        # never fewer than one channel per slice / conv group, whatever the widths say
        target = max(int(widths.get(name, current)), multiple) if name is not None else current
        if target >= current:
            continue
        idxs = _channels_to_remove(group, importance, current - target, multiple, name)
        dep = group.items[0].dep
        pruning_group = dg.get_pruning_group(dep.target.module, dep.handler, idxs)
        _refuse_emptied(group, pruning_group, names, name)
        tracker.record(pruning_group)
        pruning_group.prune()
        _IndexMappings.sizes_changed(dg)
    pruned.zero_grad(set_to_none=True)
    history = [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in dg.pruning_history()]
    widths_out = {g.name: int(widths.get(g.name, g.channels)) for g in graph}
    return PruneResult(pruned, widths_out, history, tracker.result())


class EmptiedModuleError(TraceError):
    """Cutting group :attr:`group` would leave a conv, linear or norm module with none of its channels."""

    def __init__(self, group: str, message: str) -> None:
        super().__init__(message)
        self.group = group


def _refuse_emptied(group: tp.Group, pruning: tp.Group, names: Mapping[int, str], name: str) -> None:
    """Refuses a removal that would leave a conv, linear or norm member of ``group`` with none of its channels.

    The group's slices (:func:`amc.groups._slices`) shrink in step, so this holds unless the model slices the
    channels in a way the tracing did not show; torch would then fail later with "expected weight to be at
    least 1 at dimension 0".

    Raises:
        EmptiedModuleError: naming the module that would be left empty.
    """
    held = {(id(dep.target.module), dep.handler.__name__): len(idxs) for dep, idxs in group.items}
    for dep, idxs in pruning.items:
        module = dep.target.module
        n = held.get((id(module), dep.handler.__name__), 0)
        if isinstance(module, (*PRUNABLE_TYPES, *NORM_TYPES)) and n and len(idxs) >= n:
            raise EmptiedModuleError(
                name,
                f"pruning group {name!r} would leave module {names.get(id(module), type(module).__name__)!r} with "
                f"none of its {n} channels from the group (the model slices them in a way the tracing did not "
                "show); prune this group less or leave it dense (ratio 0)",
            )


class ChannelPruner:
    """Prunes one model to many widths: what :func:`prune_channels` returns, without its per-call setup.

    :func:`prune_channels` deep-copies the model and traces Torch-Pruning's dependency graph on every call
    (about half its time on ResNet-20 and ResNet-56). A pruner does both once: it keeps one working copy
    with its traced graph, and before each pruning puts the copy and the graph's bookkeeping back into their
    state after tracing, in place (the dense values are copied back into the original parameter and buffer
    tensors, the modules' attributes and the graph's size bookkeeping are restored). The channel selection
    and removal then run exactly as in :func:`prune_channels`, so the result is the same (tests compare
    them tensor by tensor). A gradient-based criterion's gradients are computed once.

    The model of a result is the working copy: it is valid until the next :meth:`prune` call, which
    reuses it. Copy it (``copy.deepcopy``) to keep it. The pruner snapshots ``model`` when it is built;
    later changes to ``model`` are not seen.

    Args:
        model: Dense or already pruned model (left unchanged); its module names must match ``graph``.
        graph: The traced groups of the dense architecture (names, execution order, classifier).
        criterion: Importance criterion name from :data:`CRITERIA`.
        calib_batch: (inputs, targets) used by gradient-based criteria.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ModelGraph,
        criterion: str = DEFAULT_CRITERION,
        calib_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.graph = graph
        self._criterion = CRITERIA.get(criterion)
        self._model = copy.deepcopy(model).eval()
        self._grads: dict[int, torch.Tensor] = {}
        if self._criterion.needs_gradients:
            _accumulate_gradients(self._model, _required_batch(criterion, calib_batch))
            self._grads = {id(p): p.grad.detach().clone() for p in self._model.parameters() if p.grad is not None}
            self._model.zero_grad(set_to_none=True)
        # an activation-based importance is measured once, on the dense working copy
        self._importance = (
            self._criterion.importance(self._model, calib_batch) if self._criterion.from_activations else None
        )
        self._dg = TimeLimit(f"tracing {type(model).__name__} for pruning", graph.trace_timeout).call(
            lambda: tp.DependencyGraph().build_dependency(self._model, graph.example_inputs, verbose=False)
        )
        self._names = {id(m): n for n, m in self._model.named_modules()}
        self._state = _TracedState(self._model, self._dg)
        _IndexMappings.follow(self._dg)

    def prune(self, widths: Mapping[str, int]) -> PruneResult:
        """The working copy cut to ``widths`` (group name -> kept channels; groups not named stay as they are)."""
        self._state.restore()
        _IndexMappings.sizes_changed(self._dg)
        if self._grads:
            for p in self._model.parameters():
                grad = self._grads.get(id(p))
                p.grad = None if grad is None else grad.clone()
        importance = self._importance or self._criterion.importance(self._model)
        # no time limit here (an episode's hot path): the group walk it runs was bounded when the graph was traced
        return _prune_groups(self._model, self._dg, self._names, self.graph, widths, importance)


class _IndexMappings:
    """Stands in for Torch-Pruning's ``index_mapping`` module in its graph code, to update a graph's index mappings
    only when its channel counts changed.

    Torch-Pruning recomputes every index mapping of the graph (concatenation offsets, flatten strides, found by
    walking the graph for channel counts) at the start of each ``get_pruning_group``, twice per group and
    pruning (about a quarter of a ResNet-56 pruning); they change only when channels are removed. A graph that
    :meth:`follow` registered skips the update until :meth:`sizes_changed` is called for it; other graphs are
    updated as before. Installed once, on the first :class:`ChannelPruner`.
    """

    _CURRENT = "_amc_index_mappings_current"

    def __init__(self, module: object) -> None:
        self._module = module

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)

    def update_index_mapping(self, graph: tp.DependencyGraph) -> None:
        if vars(graph).get(self._CURRENT):
            return
        self._module.update_index_mapping(graph)
        if self._CURRENT in vars(graph):
            vars(graph)[self._CURRENT] = True

    @classmethod
    def follow(cls, dg: tp.DependencyGraph) -> None:
        """Registers ``dg`` (its mappings are recomputed at its next use) and installs the stand-in."""
        graph_code = sys.modules[tp.DependencyGraph.__module__]
        if not isinstance(graph_code.index_mapping, cls):
            graph_code.index_mapping = cls(graph_code.index_mapping)
        vars(dg)[cls._CURRENT] = False

    @classmethod
    def sizes_changed(cls, dg: tp.DependencyGraph) -> None:
        """Channels of ``dg``'s model were removed or restored: its mappings are recomputed at its next use."""
        if cls._CURRENT in vars(dg):
            vars(dg)[cls._CURRENT] = False


_MODULE_CONTAINERS = frozenset({"_parameters", "_buffers", "_modules"})


def _restorable(value: object) -> object:
    """A copy of a list attribute (Torch-Pruning updates some, e.g. concatenation sizes, in place)."""
    return list(value) if type(value) is list else value


class _TracedState:
    """The state of a working copy and its dependency graph after tracing, to put back before each pruning.

    Torch-Pruning's pruning functions assign new (smaller) parameters, buffers and sizes to the modules;
    the graph records removed channels in its operator nodes (concatenation / split sizes, offsets), the
    nodes' pruning dimensions and index mappings, and replaces unwrapped parameters in its own maps.
    Everything else it uses (the traced nodes and edges) never changes.
    """

    def __init__(self, model: nn.Module, dg: tp.DependencyGraph) -> None:
        self._dg = dg
        self._modules = [
            (
                m,
                {k: v for k, v in vars(m).items() if k not in _MODULE_CONTAINERS},
                dict(m._parameters),
                dict(m._buffers),
            )
            for m in model.modules()
        ]
        tensors = [t for _, _, params, buffers in self._modules for t in (*params.values(), *buffers.values())]
        self._values = [(t, t.detach().clone()) for t in tensors if t is not None]
        in_model = {id(m) for m, _, _, _ in self._modules}
        self._ops = [
            (op, {k: _restorable(v) for k, v in vars(op).items() if k not in _MODULE_CONTAINERS})
            for op in dg.module2node
            if isinstance(op, nn.Module) and id(op) not in in_model
        ]
        self._module2node = dict(dg.module2node)
        self._param_to_name = dict(dg._param_to_name)
        self._nodes = [
            (node, node.module, node.pruning_dim, [(dep, list(dep.index_mapping)) for dep in node.dependencies])
            for node in dg.module2node.values()
        ]

    @torch.no_grad()
    def restore(self) -> None:
        """Puts the working copy and the graph back into their state after tracing (the dense values copied in)."""
        for module, attrs, params, buffers in self._modules:
            added = vars(module).keys() - attrs.keys() - _MODULE_CONTAINERS
            for key in added:
                delattr(module, key)
            vars(module).update({k: _restorable(v) for k, v in attrs.items()})
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
        for tensor, value in self._values:
            if tensor.shape != value.shape:
                tensor.data = value.clone()
            else:
                tensor.copy_(value)
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
        for op, attrs in self._ops:
            vars(op).update({k: _restorable(v) for k, v in attrs.items()})
        dg = self._dg
        dg.module2node = dict(self._module2node)
        dg._param_to_name = dict(self._param_to_name)
        dg._pruning_history = []
        for node, module, pruning_dim, deps in self._nodes:
            node.module, node.pruning_dim = module, pruning_dim
            for dep, mapping in deps:
                dep.index_mapping = list(mapping)


def _channels_to_remove(
    group: tp.Group, importance: tp.importance.Importance, n_remove: int, multiple: int, name: str
) -> list[int]:
    """The ``n_remove`` least important channels of ``group``, as a plain sorted list.

    With ``multiple`` > 1 (the group feeds or leaves grouped convs) the channels are split into
    ``multiple`` equal conv groups, the importance is averaged over them, and the same positions are
    removed from every one (as Torch-Pruning's ``MetaPruner`` does), so each conv group keeps the same
    number of channels and ``groups`` stays valid.
    """
    current = len(group.items[0].idxs)
    if current % multiple or n_remove % multiple:
        raise ConfigError(
            f"group {name!r} touches grouped convolutions: its kept channels must be a multiple of {multiple}, "
            f"got {current - n_remove} of {current}; round the widths with amc.pruning.widths_for"
        )
    scores = importance(group)
    if scores is None:  # e.g. bn_scale on a group without BatchNorm: fall back to L1
        scores = tp.importance.GroupMagnitudeImportance(p=1)(group)
    size = current // multiple
    per_group = scores.detach().float().reshape(multiple, size).mean(dim=0)
    positions = torch.argsort(per_group)[: n_remove // multiple].tolist()
    return sorted(int(p) + g * size for g in range(multiple) for p in positions)


def build_graph(model: nn.Module, example_inputs: torch.Tensor, trace_timeout: float | None = None) -> ModelGraph:
    """The traced groups of ``model`` (:class:`~amc.groups.ModelGraph`), checked to prune consistently.

    Every group is pruned to its fewest channels on a copy and the copy run: Torch-Pruning keeps its own
    record of split sizes in step, but a forward that slices with fixed sizes (``torch.split(x, 4)``,
    ``x[:, :16]``) no longer runs once the channels shrink, and some architectures (channel counts computed in
    ``forward``, parameters Torch-Pruning does not know) break the same way, or have a cost the analytic model
    does not count (the pruned copy's FLOPs and params must equal its estimate). When the pruned copy fails, the
    sliced groups are frozen (:attr:`PrunableGroup.frozen` gives the error) and it is tried again; when it still
    fails, the model is refused. The outcome is remembered per architecture, settings and input shape, so a
    model is probed once per process.

    Args:
        model: The dense model (not modified).
        example_inputs: A batch of example inputs (the first one is used).
        trace_timeout: Seconds the tracing may take (None: ``$AMC_TRACE_TIMEOUT``, default 120; 0: no limit).

    Raises:
        TraceError: when the model cannot be traced, or does not run with its groups pruned (the message gives
            the error); TraceTimeoutError when the tracing takes longer than ``trace_timeout``.
    """
    graph = ModelGraph(model, example_inputs, trace_timeout)
    key = (type(model).__qualname__, architecture_hash(model), _settings_hash(model), tuple(graph.example_inputs.shape))
    if key not in _PROBED:
        (failure, emptied), frozen = _probe(model, graph), {}
        while emptied is not None and emptied not in frozen:  # freeze the group that would empty a module; again
            frozen[emptied] = f"cut to its fewest channels it would leave a module with none ({failure})"
            graph.freeze(frozen)
            failure, emptied = _probe(model, graph)
        sliced = graph.sliced() - frozen.keys() if failure else set()
        if sliced:
            reason = f"the forward pass slices its channels with fixed sizes: pruned, it fails with {failure}"
            frozen.update(dict.fromkeys(sliced, reason))
            graph.freeze(frozen)  # a frozen group stays dense in the probe too
            failure, _ = _probe(model, graph)
        _PROBED[key] = (failure, frozen)
    failure, frozen = _PROBED[key]
    if failure:
        raise TraceError(
            f"{type(model).__name__} cannot be pruned consistently: with every channel group cut to its fewest "
            f"channels (on a copy) it fails with {failure}; Torch-Pruning cannot keep this architecture "
            "consistent: choose another model or prune it by hand"
        )
    graph.freeze(frozen)
    return graph


def _probe(model: nn.Module, graph: ModelGraph) -> tuple[str, str | None]:
    """Whether ``model`` runs with every group (but the frozen ones) at its fewest channels: the error (empty: it
    does), and the group whose cut would leave a module with no channel (None: another error, or none)."""
    widths = {g.name: g.multiple for g in graph if g.multiple < g.channels}
    try:
        pruned = prune_channels(model, graph, widths).model
        with torch.no_grad():
            pruned.eval()(graph.example_inputs)
        counted = count_cost(pruned, graph.example_inputs)
    except EmptiedModuleError as exc:
        return str(exc), exc.group
    except TraceError:
        raise
    except Exception as exc:  # whatever the pruned forward or Torch-Pruning raises: report it
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", None
    if counted != graph.estimate(widths):  # an op the cost table does not model scales with the channels
        estimate = graph.estimate(widths)
        return f"a cost the analytic model cannot count exactly ({estimate} estimated, {counted} counted)", None
    return "", None


_PROBED: dict[tuple[str, str, str, tuple[int, ...]], tuple[str, dict[str, str]]] = {}
"""Outcome of :func:`build_graph` per (class, architecture hash, settings hash, input shape): the
error (empty: none) and the groups frozen with their reasons."""


def _settings_hash(model: nn.Module) -> str:
    """A hash of the plain settings of every module (numbers, strings, flags: what ``forward`` may branch on)."""
    plain = (bool, int, float, str, type(None))
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        for key, value in sorted(vars(module).items()):
            if key == "training":
                continue
            if isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value)):
                digest.update(f"{name}.{key}={value!r};".encode())
    return digest.hexdigest()[:16]


def replay_history(model: nn.Module, example_inputs: torch.Tensor, history: History) -> nn.Module:
    """Applies a recorded pruning history to a dense model in place (reproduces the pruned shapes)."""
    if history:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs[:1], verbose=False)
        dg.load_pruning_history([[n, o, list(idx)] for n, o, idx in history])
    return model


def _prunable_weights(
    model: nn.Module, graph: ModelGraph, ratios: Mapping[str, float]
) -> list[tuple[torch.Tensor, float]]:
    weights = []
    for g in graph:
        ratio = float(ratios.get(g.name, 0.0))
        for name in g.modules:
            weights.append((model.get_submodule(name).weight, ratio))
    return weights


@torch.no_grad()
def sparsify(model: nn.Module, graph: ModelGraph, ratios: Mapping[str, float], granularity: str) -> nn.Module:
    """Returns a copy with weights zeroed: ``unstructured`` removes ``ratio`` of each layer's smallest
    weights; ``nm`` applies 2:4 sparsity to every layer of a group with a non-zero ratio."""
    if granularity not in ("unstructured", "nm"):
        raise ConfigError(f"granularity {granularity!r} is not a sparsity granularity; use unstructured or nm")
    sparse = copy.deepcopy(model)
    for weight, ratio in _prunable_weights(sparse, graph, ratios):
        if ratio <= 0:
            continue
        if granularity == "unstructured":
            k = int(round(ratio * weight.numel()))
            if k:
                threshold = weight.abs().flatten().kthvalue(k).values
                weight[weight.abs() <= threshold] = 0.0
        else:
            weight.copy_(_two_of_four(weight))
    return sparse


def sparsity_ratios(graph: ModelGraph, widths: Mapping[str, int]) -> dict[str, float]:
    """The per-group sparsity that a sparsity search's width configuration stands for: ``1 - kept / channels``.

    A search over sparsity (``EnvConfig.granularity`` ``unstructured`` or ``nm``) decides kept channel counts as a
    channel search does; group ``g`` keeping ``k`` of its ``C`` channels means ``1 - k / C`` of its layers'
    weights zeroed (for ``nm``: 2:4 sparsity wherever ``k < C``). These ratios are what the policy holds and
    :func:`sparsify` applies, so the search's count and the applied model agree.
    """
    return {g.name: 1.0 - int(widths.get(g.name, g.channels)) / g.channels for g in graph}


def zeroed_weights(numel: int, cols: int, ratio: float, granularity: str) -> int:
    """How many of a ``numel``-weight layer's weights (``cols`` inputs per output) :func:`sparsify` zeroes at
    ``ratio`` (not counting weights that were zero already)."""
    if ratio <= 0:
        return 0
    if granularity == "unstructured":
        return int(round(ratio * numel))
    if granularity == "nm":
        rows = numel // cols
        full, rest = divmod(cols, 4)
        return numel - rows * (2 * full + min(rest, 2))
    raise ConfigError(f"granularity {granularity!r} is not a sparsity granularity; use unstructured or nm")


def _two_of_four(weight: torch.Tensor) -> torch.Tensor:
    """Keeps the 2 largest-magnitude weights of every 4 consecutive inputs of each output."""
    flat = weight.reshape(weight.shape[0], -1)
    cols = flat.shape[1]
    pad = (-cols) % 4
    padded = nn.functional.pad(flat, (0, pad))
    blocks = padded.reshape(flat.shape[0], -1, 4)
    top = blocks.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, top, True)
    return (blocks * mask).reshape(flat.shape[0], -1)[:, :cols].reshape(weight.shape)
