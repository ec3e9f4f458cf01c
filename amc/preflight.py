"""Pre-flight check of a model before a search: ``amc check`` and :func:`check`.

What a user wants to know before spending a 300-episode search on a model: which channel groups can be
pruned (their channels and the modules they couple), which are frozen or why the model is refused, its
FLOPs and params, whether a pruned copy saves and reloads exactly, what rounding the channel counts to
multiples of 8 or 16 does to latency, and how long an episode and a whole search will take.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from amc.cost import Cost, LatencyConfig
from amc.errors import AmcError
from amc.groups import PrunableGroup
from amc.latency import fastest_latency
from amc.progress import format_duration
from amc.pruning import ChannelPruner, build_graph, group_round_to, replay_history, widths_for

ROUNDINGS = (1, 8, 16)
"""Channel multiples whose latency effect :func:`check` measures (1: the dense widths)."""


@dataclass(frozen=True)
class EpisodeCost:
    """What one search episode costs, measured on this machine.

    Attributes:
        prune_s: Seconds to prune a copy to a policy (uniform 0.5).
        forward_s: Seconds of one forward pass of a batch of ``batch_size`` inputs through the pruned copy.
        batches: Forward passes per episode (BatchNorm re-estimation + search-val evaluation).
        batch_size: Inputs per batch.
    """

    prune_s: float
    forward_s: float
    batches: int
    batch_size: int

    @property
    def episode_s(self) -> float:
        """Estimated seconds per episode."""
        return self.prune_s + self.batches * self.forward_s


@dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`check`.

    Attributes:
        model: The model's class name.
        input_shape: One input's shape (without the batch dimension).
        refused: Why nothing can be pruned (empty when something can).
        groups: The prunable groups (frozen ones included, see :attr:`PrunableGroup.frozen`).
        cost: Dense FLOPs (per input) and params.
        reload_exact: Whether a pruned copy (uniform 0.5), saved as its pruning history and state_dict and
            loaded onto a fresh copy of the dense model, gives identical outputs (None when refused).
        latency_ms: Milliseconds of one forward pass (the fastest timed block; batch 1, one thread) with every
            group's dense width rounded down to each multiple of :data:`ROUNDINGS` (1: dense).
        episode: What one episode costs (None when refused).
        episodes: Episodes of the search estimate.
    """

    model: str
    input_shape: tuple[int, ...]
    refused: str = ""
    groups: tuple[PrunableGroup, ...] = ()
    cost: Cost | None = None
    reload_exact: bool | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    episode: EpisodeCost | None = None
    episodes: int = 300

    @property
    def prunable(self) -> bool:
        """Whether some group can shrink."""
        return not self.refused and any(not g.frozen and g.multiple < g.channels for g in self.groups)

    def __str__(self) -> str:
        return "\n".join(_report_lines(self))


def check(
    model: nn.Module,
    example_inputs: torch.Tensor,
    episodes: int = 300,
    bn_batches: int = 8,
    val_size: int = 300,
    batch_size: int = 64,
    latency: LatencyConfig | None = None,
) -> CheckReport:
    """Checks ``model`` before a search (see the module docstring); never raises for a model it cannot prune.

    Args:
        model: The dense model (left unchanged).
        example_inputs: A batch of example inputs (the first is used).
        episodes: Episodes of the search whose time is estimated.
        bn_batches: BatchNorm re-estimation batches per episode.
        val_size: Search-val inputs evaluated per episode.
        batch_size: Inputs per batch of the episode's forward passes.
        latency: How latency is measured (default: batch 1, one thread, 0.2 s per width configuration).
    """
    model = model.eval()
    shape = tuple(example_inputs.shape[1:])
    try:
        graph = build_graph(model, example_inputs)
    except AmcError as exc:
        return CheckReport(type(model).__name__, shape, refused=f"{type(exc).__name__}: {exc}", episodes=episodes)
    report = CheckReport(type(model).__name__, shape, groups=tuple(graph), cost=graph.dense_cost, episodes=episodes)
    if not report.prunable:
        return _refused(report, "every group is frozen: " + "; ".join(f"{g.name}: {g.frozen}" for g in graph))
    batches = bn_batches + math.ceil(val_size / batch_size)
    pruner = ChannelPruner(
        model, graph
    )  # one traced working copy for the three measurements (each done before the next)
    half = widths_for(graph, dict.fromkeys(graph.names, 0.5))
    return dataclasses.replace(
        report,
        reload_exact=_reloads_exactly(model, pruner, half, example_inputs[:1]),
        latency_ms=_rounding_latency(model, pruner, shape, latency or LatencyConfig()),
        episode=_episode_cost(pruner, half, example_inputs[:1], batches, batch_size),
    )


def _refused(report: CheckReport, reason: str) -> CheckReport:
    return dataclasses.replace(report, refused=reason)


def _reloads_exactly(model: nn.Module, pruner: ChannelPruner, widths: dict[str, int], x: torch.Tensor) -> bool:
    """Prunes a copy to ``widths``, saves its history and state_dict, reloads them onto a fresh dense copy."""
    result = pruner.prune(widths)
    buffer = io.BytesIO()
    torch.save({"history": result.history, "state_dict": result.model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = replay_history(copy.deepcopy(model), x, saved["history"])
    fresh.load_state_dict(saved["state_dict"])
    inputs = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(fresh.eval()(inputs), result.model.eval()(inputs))


def _rounding_latency(
    model: nn.Module, pruner: ChannelPruner, shape: tuple[int, ...], config: LatencyConfig
) -> dict[int, float]:
    """Latency with every group's dense width rounded to a multiple of each of :data:`ROUNDINGS`."""
    graph = pruner.graph
    measured: dict[tuple[int, ...], float] = {}
    out = {}
    for multiple in ROUNDINGS:
        widths = {g.name: _rounded_down(g.channels, group_round_to(g, multiple)) for g in graph}
        key = tuple(widths.values())
        if key not in measured:  # widths already multiples: the same model, measured once
            pruned = pruner.prune(widths).model if widths != graph.dense_widths() else model
            measured[key] = fastest_latency(pruned, shape, config)
        out[multiple] = measured[key]
    return out


def _rounded_down(channels: int, multiple: int) -> int:
    """``channels`` rounded down to a multiple of ``multiple`` (unchanged when there are fewer)."""
    return channels if channels < multiple else channels // multiple * multiple


def _episode_cost(
    pruner: ChannelPruner, widths: dict[str, int], x: torch.Tensor, batches: int, batch_size: int
) -> EpisodeCost:
    pruner.prune(widths)  # the first call builds kernels for the new widths
    start = time.perf_counter()
    pruned = pruner.prune(widths).model
    prune_s = time.perf_counter() - start
    batch = torch.randn(batch_size, *x.shape[1:])
    with torch.no_grad():
        pruned(batch)  # the first pass at a new shape builds its kernels
        times = []
        for _ in range(3):
            start = time.perf_counter()
            pruned(batch)
            times.append(time.perf_counter() - start)
    return EpisodeCost(prune_s, min(times), batches, batch_size)


def _report_lines(r: CheckReport) -> list[str]:
    lines = [f"model {r.model}, input {list(r.input_shape)}"]
    if r.cost is not None:
        lines.append(f"dense cost: {r.cost.flops / 1e6:,.2f} MFLOPs per input, {r.cost.params:,} params")
    if r.refused:
        return [*lines, f"nothing can be pruned: {r.refused}"]
    lines.append(
        f"{len(r.groups)} groups (channels, kind, frozen or kept multiple, the modules whose outputs shrink together):"
    )
    for g in r.groups:
        state = f", FROZEN: {g.frozen}" if g.frozen else f", multiple of {g.multiple}" if g.multiple > 1 else ""
        coupled = ", ".join(g.modules[:4]) + (f" and {len(g.modules) - 4} more" if len(g.modules) > 4 else "")
        lines.append(f"  {g.name}: {g.channels} channels, {g.kind}{state}; couples {coupled}")
    if r.reload_exact is not None:
        lines.append(f"a pruned copy saves and reloads exactly: {'yes' if r.reload_exact else 'NO'}")
    if r.latency_ms:
        dense = r.latency_ms[1]
        parts = [f"round_to {m}: {ms:.3f} ms ({ms / dense:.2f}x)" for m, ms in r.latency_ms.items()]
        lines.append("latency of the dense widths rounded down to multiples (batch 1): " + ", ".join(parts))
    if r.episode is not None:
        e = r.episode
        lines.append(
            f"one episode ~{e.episode_s:.2f} s (pruning {e.prune_s * 1000:.0f} ms + {e.batches} forward passes of "
            f"{e.batch_size} inputs at {e.forward_s * 1000:.0f} ms); a {r.episodes}-episode search "
            f"~{format_duration(e.episode_s * r.episodes)} on one worker"
        )
    return lines


__all__ = ["ROUNDINGS", "CheckReport", "EpisodeCost", "check"]
