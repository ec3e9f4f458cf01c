"""APoZ: the Average Percentage of Zeros a channel outputs after its ReLU-like activation (Hu et al., 2016).

An activation-based pruning criterion: a channel whose activation is zero for most inputs carries little,
so it goes first. The fractions are measured on calibration inputs by running the model once under a
:class:`torch.overrides.TorchFunctionMode` that sees every ReLU-like call (``nn.ReLU`` / ``nn.ReLU6``
modules and the functional forms alike) and follows which layers' outputs reach it through additions
(a residual block's ReLU after ``out + identity`` counts for the layers on both branches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from amc.errors import ConfigError

_RELU = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6})
_ADD = frozenset(
    {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__}
)
_PASS_THROUGH = frozenset({F.dropout, torch.Tensor.contiguous})


def _relu_like(func: object, args: tuple, kwargs: Mapping) -> bool:
    """Whether ``func(*args, **kwargs)`` outputs zero exactly where its input is <= 0 (ReLU, ReLU6, hardtanh(0, x))."""
    if func in _RELU:
        return True
    if func in (F.hardtanh, F.hardtanh_):
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        return float(low) == 0.0
    return False


def _channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "num_features", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None


@dataclass
class _Tally:
    """Per-module running sums of the per-channel zero fraction after the activation."""

    zeros: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, fraction: torch.Tensor) -> None:
        self.zeros[name] = self.zeros.get(name, 0) + fraction
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, torch.Tensor]:
        return {n: z / self.counts[n] for n, z in self.zeros.items()}


class _ZeroCounter(TorchFunctionMode):
    """Follows which layer outputs reach each ReLU-like call and tallies the zero fraction of its output per channel."""

    def __init__(self, channels: Mapping[str, int]) -> None:
        super().__init__()
        self.producers: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.channels = channels
        self.tally = _Tally()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sources = frozenset().union(*(self.producers.get(a, ()) for a in args if isinstance(a, torch.Tensor)))
        if not sources or not isinstance(out, torch.Tensor):
            return out
        if _relu_like(func, args, kwargs):
            self._count(out.detach(), sources)
        elif func in _ADD or func in _PASS_THROUGH:
            self.producers[out] = sources | self.producers.get(out, frozenset())
        return out

    def _count(self, out: torch.Tensor, sources: frozenset[str]) -> None:
        for name in sources:
            width = self.channels[name]
            dim = 1 if out.dim() >= 2 and out.shape[1] == width else -1
            if out.shape[dim] != width:
                continue
            moved = out.movedim(dim, 0).reshape(width, -1)
            self.tally.add(name, (moved == 0).float().mean(dim=1).cpu())


@torch.no_grad()
def measure_apoz(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fraction of zero outputs of each layer's channels after its ReLU-like activation, on ``inputs``.

    Args:
        model: The model (run in eval mode; left unchanged).
        inputs: A calibration batch of inputs.

    Returns:
        Module name -> per-channel fraction in [0, 1], for every conv / linear / norm layer whose output reaches
        a ReLU-like activation (directly or through additions). Layers that reach none are absent.
    """
    was_training = model.training
    model.eval()
    modules = {n: m for n, m in model.named_modules() if _channels(m) is not None}
    counter = _ZeroCounter({n: _channels(m) for n, m in modules.items()})

    def hook(name: str):
        def record(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                counter.producers[output] = frozenset({name})

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        with counter:
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counter.tally.means()


class ApozImportance(tp.importance.Importance):
    """Torch-Pruning importance from measured APoZ: ``1 - APoZ`` averaged over the group's measured layers.

    Args:
        apoz: Module -> per-channel zero fraction (:func:`measure_apoz`), keyed by the module objects of the model
            the importance is used on.
    """

    def __init__(self, apoz: Mapping[nn.Module, torch.Tensor]) -> None:
        self.apoz = apoz

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        total: torch.Tensor | None = None
        layers = 0
        width = len(group.items[0].idxs)
        for i, (dep, idxs) in enumerate(group.items):
            zeros = self.apoz.get(dep.target.module)
            if zeros is None or dep.handler.__name__ != "prune_out_channels":
                continue
            root = group[i].root_idxs
            if any(r is None for r in root):
                continue
            total = torch.zeros(width) if total is None else total
            total.scatter_add_(0, torch.tensor(root), 1.0 - zeros[list(idxs)])
            layers += 1
        if total is None:
            names = sorted({type(dep.target.module).__name__ for dep, _ in group.items})
            raise ConfigError(
                f"criterion 'apoz' needs a ReLU-like activation after the layers it ranks; the group of "
                f"{group.items[0].dep.target._name} ({', '.join(names)}) reaches none; use another criterion (l2)"
            )
        return total / layers


def apoz_importance(model: nn.Module, inputs: torch.Tensor) -> ApozImportance:
    """An :class:`ApozImportance` measured on ``model`` (the copy that will be pruned) with ``inputs``."""
    by_name = dict(model.named_modules())
    return ApozImportance({by_name[n]: z for n, z in measure_apoz(model, inputs).items()})
