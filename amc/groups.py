"""Dependency groups: the prunable units of a model, traced with Torch-Pruning behind our own adapter.

A group is a set of coupled channels (a conv's outputs plus everything that must shrink with them:
BatchNorms, the next layers' inputs, residual adds, depthwise convs, concatenations). A group that feeds
or leaves a grouped conv shrinks in steps of its ``groups`` (:attr:`PrunableGroup.multiple`). Each group gets a
stable, human-readable name: the name of the first conv / linear module (in execution order) whose
output channels it removes. The classifier's outputs are never pruned.

:class:`ModelGraph` also holds an exact analytic cost table, so the FLOPs and params of any width
configuration are known without building the pruned model (tests check it against the real count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from amc.cost import Cost, count_cost
from amc.errors import ConfigError, TraceError
from amc.time_limit import TimeLimit

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNABLE_TYPES = (*CONV_TYPES, nn.Linear)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class PrunableGroup:
    """One prunable dependency group.

    Attributes:
        name: Stable name (the first conv / linear module whose outputs the group removes).
        index: Position in execution order.
        channels: Channel count of the dense group.
        modules: Conv / linear modules whose output channels the group removes.
        kind: ``conv``, ``depthwise`` (the group contains a depthwise conv) or ``linear``.
        in_channels: Input channels of the named module.
        kernel: Kernel side of the named module (1 for linear).
        stride: Stride of the named module (1 for linear).
        spatial: Output height x width of the named module (1 for linear).
        flops: Dense FLOPs of all layers whose input or output channels the group scales.
        multiple: Kept channel counts must be a multiple of this: the least common multiple of the
            ``groups`` of the grouped convs (and ``num_groups`` of the GroupNorms) the group touches, since
            each conv group keeps the same number of channels, and of the equal slices a model cuts the
            channels into (``torch.split``, ``chunk``, slicing: each slice keeps the same number, so none is
            left empty); 1 when nothing is grouped or sliced; the whole group when it cannot shrink at all.
        frozen: Why the group cannot shrink (empty when it can): its channels are sliced unevenly, or a
            grouped conv holds only part of them. A frozen group's :attr:`multiple` is its channel count.
    """

    name: str
    index: int
    channels: int
    modules: tuple[str, ...]
    kind: str
    in_channels: int
    kernel: int
    stride: int
    spatial: int
    flops: int
    multiple: int = 1
    frozen: str = ""


@dataclass
class _ModuleCost:
    """Dense cost of one conv / linear / norm module and which groups scale its channels."""

    kind: str  # conv | depthwise | linear | norm (also a loose parameter: params per channel, no FLOPs)
    flops_unit: int  # FLOPs per (input-channel-per-group x output-channel) pair
    in_features: int
    out_features: int
    conv_groups: int
    weight_unit: int  # weight elements per (in-per-group x out) pair
    has_bias: bool
    norm_params_per_channel: int
    in_parts: dict[int, int] = field(default_factory=dict)  # group index -> channels of this module's input
    out_parts: dict[int, int] = field(default_factory=dict)


def _scaled(total: int, parts: dict[int, int], keep: Mapping[int, int], dense: Mapping[int, int]) -> int:
    kept = total
    for g, n in parts.items():
        kept += n * keep[g] // dense[g] - n
    return kept


class _CostVectors:
    """The cost table as integer arrays: :meth:`ModelGraph.estimate` in a few array operations instead of a
    Python loop over the modules (it runs twice per episode step, for the budget wall and the observation;
    on ResNet-56 about 5x faster), for many width configurations at once (:meth:`ModelGraph.estimate_many`: the
    proposals' walk). Computes exactly what :func:`_module_flops_params` summed over the modules does.

    Args:
        costs: The cost table's entries.
        dense: Dense channels per group index.
    """

    def __init__(self, costs: Sequence[_ModuleCost], dense: Sequence[int]) -> None:
        def ints(values: object) -> np.ndarray:
            return np.fromiter(values, dtype=np.int64, count=len(costs))  # type: ignore[arg-type]

        self.dense = np.asarray(dense, dtype=np.int64)
        self.norm = np.array([mc.kind == "norm" for mc in costs], dtype=bool)
        self.depthwise = np.array([mc.kind == "depthwise" for mc in costs], dtype=bool)
        self.out_features = ints(mc.out_features for mc in costs)
        self.in_features = ints(mc.in_features for mc in costs)
        self.conv_groups = ints(mc.conv_groups for mc in costs)
        self.flops_unit = ints(mc.flops_unit for mc in costs)
        self.weight_unit = ints(mc.weight_unit for mc in costs)
        self.bias = ints(int(mc.has_bias) for mc in costs)
        self.norm_params = ints(mc.norm_params_per_channel for mc in costs)
        self.out_parts = self._parts([mc.out_parts for mc in costs])
        self.in_parts = self._parts([mc.in_parts for mc in costs])

    @staticmethod
    def _parts(parts: list[dict[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(module position, group index, channels) of every module's part, as three arrays."""
        rows = [(m, g, n) for m, module_parts in enumerate(parts) for g, n in module_parts.items()]
        return tuple(np.asarray([r[i] for r in rows], dtype=np.int64) for i in range(3))  # type: ignore[return-value]

    def _scaled(
        self, total: np.ndarray, parts: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray
    ) -> np.ndarray:
        """``total`` (per module) scaled by the kept channels: ``(modules,)`` for a ``(groups,)`` ``keep``, one row
        per row of a ``(rows, groups)`` one."""
        modules, groups, n = parts
        if not len(modules):
            return np.broadcast_to(total, (*keep.shape[:-1], len(total)))
        delta = n * keep[..., groups] // self.dense[groups] - n
        if keep.ndim == 1:  # an episode's step (twice per step): no cell indices to build
            return total + np.bincount(modules, weights=delta, minlength=len(total)).astype(np.int64)  # exact ints
        rows = len(keep)
        cells = (np.arange(rows)[:, None] * len(total) + modules).ravel()
        added = np.bincount(cells, weights=delta.ravel(), minlength=rows * len(total))
        return total + added.astype(np.int64).reshape(rows, len(total))

    def estimate(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and params of the modelled modules with ``keep[..., i]`` channels in group ``i``: int64 scalars for a
        ``(groups,)`` ``keep``, ``(rows,)`` arrays for a ``(rows, groups)`` one."""
        out_f = self._scaled(self.out_features, self.out_parts, keep)
        in_f = self._scaled(self.in_features, self.in_parts, keep)
        in_per_group = np.where(self.depthwise, self.in_features, in_f) // self.conv_groups
        flops = np.where(self.norm, 0, self.flops_unit * in_per_group * out_f)
        params = np.where(self.norm, self.norm_params * out_f, (self.weight_unit * in_per_group + self.bias) * out_f)
        return flops.sum(axis=-1), params.sum(axis=-1)


def _module_flops_params(mc: _ModuleCost, keep: Mapping[int, int], dense: Mapping[int, int]) -> tuple[int, int]:
    out_f = _scaled(mc.out_features, mc.out_parts, keep, dense)
    if mc.kind == "norm":
        return 0, mc.norm_params_per_channel * out_f
    if mc.kind == "depthwise":
        in_per_group = mc.in_features // mc.conv_groups
    else:
        in_per_group = _scaled(mc.in_features, mc.in_parts, keep, dense) // mc.conv_groups
    flops = mc.flops_unit * in_per_group * out_f
    params = mc.weight_unit * in_per_group * out_f + (out_f if mc.has_bias else 0)
    return flops, params


def execution_order(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[str], dict[str, torch.Size]]:
    """Names of leaf modules in the order a forward pass calls them, and their output shapes."""
    order: list[str] = []
    shapes: dict[str, torch.Size] = {}
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:

            def hook(mod: nn.Module, inp: object, out: object, name: str = name) -> None:
                if name not in shapes:
                    order.append(name)
                    shapes[name] = out.shape if isinstance(out, torch.Tensor) else torch.Size()

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(example_inputs[:1])
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return order, shapes


def output_layer(model: nn.Module, order: list[str]) -> str:
    """The last conv / linear module called in a forward pass: the classifier, never pruned."""
    modules = dict(model.named_modules())
    for name in reversed(order):
        if isinstance(modules[name], PRUNABLE_TYPES):
            return name
    raise TraceError("the model has no conv or linear layer, so it has nothing to prune")


def _dense_cost(model: nn.Module, example_inputs: torch.Tensor) -> Cost:
    """The exact dense cost; a TraceError when torch's FLOP counter cannot run the model."""
    try:
        return count_cost(model, example_inputs)
    except Exception as exc:  # FlopCounterMode's module tracker asserts on some forwards (timm's CaiT)
        raise TraceError(
            f"cannot count the FLOPs of {type(model).__name__} with torch's FlopCounterMode: {type(exc).__name__}: "
            f"{exc}; the cost model needs it: choose another model"
        ) from exc


def _failing_location(exc: BaseException, model: nn.Module) -> str:
    """Best effort: the module or op Torch-Pruning was handling when it failed."""
    names = {id(m): n for n, m in model.named_modules()}
    where = "an unknown module"
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for key in ("module", "layer", "node", "dep"):
            obj = frame.f_locals.get(key)
            target = getattr(obj, "module", obj)
            target = getattr(target, "module", target)
            if isinstance(target, nn.Module) and id(target) in names:
                where = f"module {names[id(target)]!r} ({type(target).__name__})"
            elif obj is not None and hasattr(obj, "grad_fn") and obj.grad_fn is not None:
                where = f"op {type(obj.grad_fn).__name__}"
    return where


class ModelGraph:
    """The traced dependency groups of a model plus an exact analytic cost table.

    Args:
        model: The dense model (not modified).
        example_inputs: A batch of example inputs (the first one is used).
        trace_timeout: Seconds the tracing may take (None: ``$AMC_TRACE_TIMEOUT``, default 120; 0: no limit).

    Raises:
        TraceError: when Torch-Pruning cannot trace the model; the message names the failing module/op.
        TraceTimeoutError: when the tracing takes longer than ``trace_timeout``.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, trace_timeout: float | None = None) -> None:
        self.example_inputs = example_inputs[:1].detach().clone()
        self.trace_timeout = trace_timeout
        _reject_unsupported_modules(model)
        order, shapes = execution_order(model, self.example_inputs)
        self.classifier = output_layer(model, order)
        self._order: dict[str, int] = {name: i for i, name in enumerate(order)}
        self._names = {id(m): n for n, m in model.named_modules()}
        self._names.update({id(p): n for n, p in model.named_parameters()})
        self._param_dims: dict[int, int] = {}
        raw_groups = self._trace(model)
        self.groups = self._describe(model, raw_groups, shapes)
        self.dense_cost = _dense_cost(model, self.example_inputs)
        self._costs = self._cost_table(model, raw_groups, shapes)
        self._vectors = _CostVectors(list(self._costs.values()), [g.channels for g in self.groups])
        modelled = self._estimate_raw({g.index: g.channels for g in self.groups})
        self._other = Cost(self.dense_cost.flops - modelled.flops, self.dense_cost.params - modelled.params)
        self._fill_group_flops()

    # ------------------------------------------------------------------ tracing
    def _trace(self, model: nn.Module) -> list[list[tuple[nn.Module, str, int]]]:
        classifier = model.get_submodule(self.classifier)
        limit = TimeLimit(f"tracing the dependency groups of {type(model).__name__}", self.trace_timeout)

        def trace() -> list[tuple[list[tuple[nn.Module, str, int]], int]]:
            limit.phase = "DependencyGraph.build_dependency"
            graph = tp.DependencyGraph().build_dependency(model, self.example_inputs, verbose=False)
            # parameters used outside a module's forward (ConvNeXt's layer_scale, ViT's class token) shrink too
            self._param_dims = {id(u.parameters): int(u.pruning_dim) for u in graph.unwrapped_parameters}
            return [(_plain_items(g), _slices(g)) for g in all_groups(graph, classifier, limit)]

        try:
            groups = limit.call(trace)
        except TraceError:
            raise
        except Exception as exc:  # Torch-Pruning raises anything; name the place instead
            where = _failing_location(exc, model)
            hint = ""
            if "View" in where or "Reshape" in where:
                hint = "; reshapes that mix channels (e.g. ShuffleNet's channel shuffle) cannot be pruned"
            raise TraceError(
                f"cannot trace the dependency groups of {type(model).__name__}: "
                f"{type(exc).__name__}: {exc} while handling {where}{hint}"
            ) from exc
        keyed = []
        for items, slices in groups:
            outs = [
                self._names[id(m)] for m, h, _ in items if h == "prune_out_channels" and isinstance(m, PRUNABLE_TYPES)
            ]
            if outs:
                keyed.append((min(self._order.get(n, 10**9) for n in outs), items, slices))
        keyed.sort(key=lambda entry: entry[0])
        if not keyed:
            raise TraceError(f"{type(model).__name__} has no prunable channel group besides its classifier")
        self._slices = [slices for _, _, slices in keyed]
        return [items for _, items, _ in keyed]

    def _describe(self, model: nn.Module, raw: list, shapes: dict[str, torch.Size]) -> list[PrunableGroup]:
        described = []
        for index, items in enumerate(raw):
            outs = [
                self._names[id(m)] for m, h, _ in items if h == "prune_out_channels" and isinstance(m, PRUNABLE_TYPES)
            ]
            outs = sorted(set(outs), key=lambda n: self._order.get(n, 10**9))
            root = model.get_submodule(outs[0])
            depthwise = any(is_depthwise(m) for m, _, _ in items)
            kind = "depthwise" if depthwise else ("linear" if isinstance(root, nn.Linear) else "conv")
            shape = shapes.get(outs[0], torch.Size())
            multiple, frozen = _channel_multiple(items, self._slices[index])
            described.append(
                PrunableGroup(
                    name=outs[0],
                    index=index,
                    channels=items[0][2],
                    modules=tuple(outs),
                    kind=kind,
                    in_channels=int(getattr(root, "in_channels", getattr(root, "in_features", 0))),
                    kernel=int(getattr(root, "kernel_size", (1,))[0]),
                    stride=int(getattr(root, "stride", (1,))[0]),
                    spatial=int(torch.Size(shape[2:]).numel()) if len(shape) > 2 else 1,
                    flops=0,
                    multiple=multiple,
                    frozen=frozen,
                )
            )
        return described

    # ------------------------------------------------------------------ costs
    def _cost_table(self, model: nn.Module, raw: list, shapes: dict[str, torch.Size]) -> dict[str, _ModuleCost]:
        table: dict[str, _ModuleCost] = {}
        for name, module in model.named_modules():
            mc = _module_cost(module, shapes.get(name))
            if mc is not None:
                table[name] = mc
        for index, items in enumerate(raw):
            for module, handler, n in items:
                name = self._names.get(id(module))
                if isinstance(module, nn.Parameter) and id(module) in self._param_dims and name not in table:
                    size = int(module.shape[self._param_dims[id(module)]])
                    table[name] = _ModuleCost("norm", 0, size, size, 1, 0, False, module.numel() // size)
                if name not in table:
                    continue
                mc = table[name]
                is_out = handler == "prune_out_channels" or mc.kind == "norm"
                (mc.out_parts if is_out else mc.in_parts)[index] = n
        return table

    def _estimate_raw(self, keep: Mapping[int, int]) -> Cost:
        flops, params = self._vectors.estimate(np.array([keep[g.index] for g in self.groups], dtype=np.int64))
        return Cost(int(flops), int(params))

    def _fill_group_flops(self) -> None:
        full = {g.index: g.channels for g in self.groups}
        dense = {g.index: g.channels for g in self.groups}
        filled = []
        for g in self.groups:
            touched = [mc for mc in self._costs.values() if g.index in mc.in_parts or g.index in mc.out_parts]
            flops = sum(_module_flops_params(mc, full, dense)[0] for mc in touched)
            filled.append(PrunableGroup(**{**g.__dict__, "flops": flops}))
        self.groups = filled

    def sliced(self) -> set[str]:
        """Names of the groups whose channels the model slices (into equal parts) and that are not frozen."""
        return {g.name for g in self.groups if 1 < self._slices[g.index] and not g.frozen}

    def freeze(self, reasons: Mapping[str, str]) -> None:
        """Freezes the groups named in ``reasons`` (kept dense: :attr:`PrunableGroup.frozen` gives the reason)."""
        self.groups = [
            dataclasses.replace(g, multiple=g.channels, frozen=reasons[g.name]) if g.name in reasons else g
            for g in self.groups
        ]

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[PrunableGroup]:
        return iter(self.groups)

    @property
    def order(self) -> Mapping[str, int]:
        """Execution order of the dense model's leaf modules: module name -> position in a forward pass.

        Read-only (a mapping proxy); group names are ordered by it, and the pruning uses it to name the
        groups Torch-Pruning finds on a copy of the model.
        """
        return MappingProxyType(self._order)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> PrunableGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"no prunable group named {name!r}; groups: {', '.join(self.names)}")

    def estimate(self, widths: Mapping[str, int]) -> Cost:
        """Exact FLOPs and params of the model with each group cut to ``widths[name]`` channels.

        Groups missing from ``widths`` stay dense.
        """
        keep = {g.index: int(widths.get(g.name, g.channels)) for g in self.groups}
        modelled = self._estimate_raw(keep)
        return Cost(modelled.flops + self._other.flops, modelled.params + self._other.params)

    def estimate_many(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact FLOPs and params of many width configurations at once (what :meth:`estimate` gives for each).

        Args:
            widths: ``(rows, groups)`` kept channels, one column per group in :attr:`groups` order.

        Returns:
            The FLOPs and the params of each row, ``(rows,)`` int64 each.
        """
        flops, params = self._vectors.estimate(np.asarray(widths, dtype=np.int64).reshape(-1, len(self.groups)))
        return flops + self._other.flops, params + self._other.params

    def dense_widths(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    def layer_channels(self, widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Input and output channels of every conv / linear module some group scales, at ``widths``.

        The decomposition :meth:`estimate` counts FLOPs with: a module's channels follow the groups that
        feed its input and the groups of its output (each a non-decreasing function of those widths).
        A depthwise conv's input equals its output. Modules no group touches are left out (their cost
        does not depend on the widths). Groups missing from ``widths`` stay dense.
        """
        keep = {g.index: int(widths.get(g.name, g.channels)) for g in self.groups}
        dense = {g.index: g.channels for g in self.groups}
        out: dict[str, tuple[int, int]] = {}
        for name, mc in self._costs.items():
            if mc.kind == "norm" or not (mc.in_parts or mc.out_parts):
                continue
            out_f = _scaled(mc.out_features, mc.out_parts, keep, dense)
            in_f = out_f if mc.kind == "depthwise" else _scaled(mc.in_features, mc.in_parts, keep, dense)
            out[name] = (in_f, out_f)
        return out


def architecture_hash(model: nn.Module) -> str:
    """A short hash of the dense architecture: module names, types and parameter shapes."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__name__};".encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


ATTENTION_TYPES = frozenset(
    {
        "Attention",
        "MultiheadAttention",
        "ShiftedWindowAttention",
        "ShiftedWindowAttentionV2",
        "RelativePositionalMultiHeadAttention",
    }
)
"""Class names of attention layers (PyTorch, torchvision's Swin / MaxViT, timm-style ``Attention``), refused."""


def _is_attention(module: nn.Module) -> bool:
    """An attention layer: a class of :data:`ATTENTION_TYPES`, or a class named ``...Attention...`` / ``...Attn``
    with attention heads (``num_heads``: timm's ``ClassAttn``, ``WindowAttention``, ...). Channel attention without
    heads (ResNeSt's ``SplitAttn``, SKNet's ``SelectiveKernelAttn``, squeeze-excite) prunes like any conv."""
    names = [cls.__name__ for cls in type(module).__mro__]
    if any(n in ATTENTION_TYPES for n in names):
        return True
    named = any("Attention" in n or n.endswith("Attn") for n in names)
    return named and hasattr(module, "num_heads")


def _reject_unsupported_modules(model: nn.Module) -> None:
    """Refuses what the pruning cannot keep consistent or the cost table cannot count exactly.

    Attention layers (ViT, Swin, MaxViT): their heads and embedding width would need head-aware pruning
    and attention FLOPs in the cost table. Recurrent layers (LSTM, GRU: timm's Sequencer), transposed convs,
    and depthwise convs with a channel multiplier.
    """
    for name, module in model.named_modules():
        if _is_attention(module):
            raise TraceError(
                f"module {name!r} ({type(module).__name__}) is an attention layer; pruning attention heads and "
                "embedding widths is not supported: choose a convolutional model (ResNet, RegNet, MobileNet, ...)"
            )
        if isinstance(module, nn.RNNBase):
            raise TraceError(
                f"module {name!r} is a recurrent layer ({type(module).__name__}); the cost model does not count "
                "recurrent layers, so their pruning is not supported: choose a convolutional model"
            )
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            raise TraceError(
                f"module {name!r} is a transposed convolution ({type(module).__name__}); transposed convolutions are "
                "not supported: choose a classifier without them"
            )
        if isinstance(module, CONV_TYPES) and module.groups > 1 and not is_depthwise(module):
            if module.groups in (module.in_channels, module.out_channels):
                raise TraceError(
                    f"module {name!r} is a depthwise convolution with a channel multiplier (in_channels="
                    f"{module.in_channels}, out_channels={module.out_channels}, groups={module.groups}); only "
                    "depthwise convs with out_channels == in_channels and grouped convs with several channels per "
                    "group on both sides are supported"
                )


def is_depthwise(module: nn.Module) -> bool:
    """A Conv1d / Conv2d / Conv3d with one input and one output channel per group."""
    return (
        isinstance(module, CONV_TYPES)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _channel_multiple(items: list[tuple[nn.Module, str, int]], slices: int) -> tuple[int, str]:
    """Kept channels of a group must be a multiple of this (see :attr:`PrunableGroup.multiple`), and why the
    group is frozen (empty when it is not).

    A grouped conv keeps its ``groups``: the same channel positions are removed from every conv group
    (Torch-Pruning's rule for grouped convs), so every group it touches shrinks in steps of ``groups``.
    When the group covers only part of such a conv's channels (e.g. one input of a concatenation) that
    rule cannot hold, and the group is kept whole. ``slices`` equal slices (see :func:`_slices`; 0: uneven)
    shrink the same way.
    """
    channels = items[0][2]
    if slices == 0:
        return channels, "its channels are sliced into parts of unequal size, which would not shrink in step"
    multiple, frozen = slices, ""
    for module, handler, n in items:
        if isinstance(module, CONV_TYPES) and module.groups > 1 and not is_depthwise(module):
            size = module.out_channels if handler == "prune_out_channels" else module.in_channels
            multiple = math.lcm(multiple, module.groups if n == size else channels)
            frozen = frozen or ("" if n == size else "a grouped convolution holds only part of its channels")
        elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            multiple = math.lcm(multiple, module.num_groups if n == module.num_channels else channels)
            frozen = frozen or ("" if n == module.num_channels else "a GroupNorm holds only part of its channels")
    if channels % multiple:
        return channels, frozen or f"its {channels} channels are not a multiple of the grouping ({multiple})"
    return multiple, frozen if multiple == channels and channels > 1 else ""


def all_groups(graph: tp.DependencyGraph, classifier: nn.Module, limit: TimeLimit | None = None) -> Iterator[tp.Group]:
    """Torch-Pruning's ``get_all_groups`` (every group but the classifier's outputs), counting its root layers in
    ``limit`` (its progress lines and error say how far it got)."""
    if limit is None:
        yield from graph.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_TYPES)
        return
    limit.phase, limit.done = "DependencyGraph.get_all_groups", 0
    limit.total = sum(isinstance(m, PRUNABLE_TYPES) for m in graph.module2node)
    find = graph.get_pruning_group

    def counted(*args: object, **kwargs: object) -> tp.Group:
        limit.done += 1
        return find(*args, **kwargs)

    graph.get_pruning_group = counted  # an instance attribute: get_all_groups calls self.get_pruning_group
    try:
        yield from graph.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_TYPES)
    finally:
        del graph.get_pruning_group


def _plain_items(group: tp.Group) -> list[tuple[nn.Module, str, int]]:
    """(module, handler name, channels it holds) of every member of a Torch-Pruning group."""
    return [(dep.target.module, dep.handler.__name__, len(idxs)) for dep, idxs in group.items]


def _root_indices(idxs: Sequence[object]) -> frozenset[int]:
    """The group channels (root indices) a member's indices stand for."""
    return frozenset(int(getattr(i, "root_idx", None) if getattr(i, "root_idx", None) is not None else i) for i in idxs)


def _slices(group: tp.Group) -> int:
    """Into how many equal, contiguous slices the model cuts the group's channels (1: none; 0: uneven).

    A member (conv, linear, norm) that holds only part of the group's channels sees a slice of them (a
    ``torch.split``, ``chunk`` or slicing after the group's layer). Pruning that removes all channels of
    one slice would leave that member with no channels at all, so the slices must shrink in step: the
    group is cut into the finest common slices, and when they are equal and contiguous each keeps the
    same number (the group's :attr:`PrunableGroup.multiple`); otherwise the group is frozen.
    """
    channels = len(group.items[0].idxs)
    parts = {
        _root_indices(idxs)
        for dep, idxs in group.items
        if isinstance(dep.target.module, (*PRUNABLE_TYPES, *NORM_TYPES)) and 0 < len(idxs) < channels
    }
    if not parts:
        return 1
    signature = {c: tuple(c in p for p in parts) for c in range(channels)}  # the finest common slices
    cuts = [c for c in range(1, channels) if signature[c] != signature[c - 1]]
    bounds = [0, *cuts, channels]
    sizes = {b - a for a, b in zip(bounds[:-1], bounds[1:])}
    distinct = len(set(signature.values())) == len(bounds) - 1  # each slice contiguous
    return len(bounds) - 1 if len(sizes) == 1 and distinct else 0


def _module_cost(module: nn.Module, shape: torch.Size | None) -> _ModuleCost | None:
    if isinstance(module, CONV_TYPES):
        spatial = int(torch.Size(shape[2:]).numel()) if shape is not None else 0
        kernel = int(torch.Size(module.kernel_size).numel())
        kind = "depthwise" if is_depthwise(module) else "conv"
        return _ModuleCost(
            kind,
            2 * spatial * kernel,
            module.in_channels,
            module.out_channels,
            module.groups,
            kernel,
            module.bias is not None,
            0,
        )
    if isinstance(module, nn.Linear):
        tokens = int(shape[1:-1].numel()) if shape is not None and len(shape) > 2 else 1
        if shape is None:
            tokens = 0
        return _ModuleCost(
            "linear", 2 * tokens, module.in_features, module.out_features, 1, 1, module.bias is not None, 0
        )
    if isinstance(module, NORM_TYPES):
        n = sum(1 for p in module.parameters(recurse=False))
        channels = getattr(module, "num_features", None) or getattr(module, "num_channels", None)
        if channels is None:
            channels = int(torch.Size(module.normalized_shape).numel())
        return _ModuleCost("norm", 0, channels, channels, 1, 0, False, n) if n else None
    return None
