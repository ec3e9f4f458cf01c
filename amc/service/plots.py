"""Plots users would rather look at than read (written as PNG files)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from amc.service.front import ParetoFront

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def fit_title(fig: Figure, title: str, fontsize: float = 11) -> Text:
    """Sets ``title`` as the figure's title, wrapped onto as many lines as it needs to fit the figure's width.

    Lays the figure out (``tight_layout``) around the wrapped title; call it after drawing the axes.
    """
    text = fig.suptitle(title, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    width = len(title)
    fig.tight_layout()
    while width > 8:
        extent = text.get_window_extent(renderer)
        margin = 0.01 * fig.bbox.width
        if extent.x0 >= margin and extent.x1 <= fig.bbox.width - margin:
            break
        width = max(8, int(width * 0.85))
        text.set_text(textwrap.fill(title, width, break_long_words=False))
        fig.tight_layout()
    return text


def policy_figure(ratios: Mapping[str, float], uniform: float | None = None, title: str = "") -> Figure:
    """The figure of :func:`policy_bars` (yours to save and close)."""
    plt = _pyplot()
    names = list(ratios)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4.2), dpi=DPI)
    ax.bar(range(len(names)), [ratios[n] for n in names], color="#3b7dd8", label="searched policy")
    if uniform is not None:
        ax.axhline(uniform, color="#d8553b", ls="--", lw=1.5, label=f"uniform ({uniform:.2f})")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pruning ratio (fraction of channels removed)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fit_title(fig, title or "Per-group pruning ratios")
    return fig


def policy_bars(path: Path, ratios: Mapping[str, float], uniform: float | None = None, title: str = "") -> Path:
    """Bar plot of per-group pruning ratios, with the uniform baseline's ratio as a line."""
    return _save(policy_figure(ratios, uniform, title), path)


def search_curves(
    path: Path, episodes: Sequence[int], rewards: Sequence[float], top1: Sequence[float], warmup: int = 0
) -> Path:
    """Reward and search-val top-1 over episodes, with the running best."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, label in ((a, rewards, "reward"), (b, [t * 100 for t in top1], "search-val top-1 (%)")):
        best, run = float("-inf"), []
        for v in values:
            best = max(best, v)
            run.append(best)
        ax.plot(episodes, values, ".", ms=3, alpha=0.6, label="episode")
        ax.plot(episodes, run, "-", color="k", lw=1.2, label="best so far")
        if warmup:
            ax.axvline(warmup - 0.5, color="grey", ls=":", lw=1, label="end of warm-up")
        ax.set_xlabel("episode")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The 2-D front (min x, max y) of ``points`` as a step line."""
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            xs.append(x)
            ys.append(y)
            best = y
    return xs, ys


def _front_panel(ax: Axes, front: ParetoFront, cost: str) -> None:
    """One panel of :func:`pareto_figure`: top-1 against ``cost`` (``flops_ratio`` or ``params_ratio``)."""
    keys = front.keys
    others = [c for c in front.candidates if c.key not in keys]
    ax.plot(
        [getattr(c, cost) for c in others],
        [c.top1 * 100 for c in others],
        ".",
        color="#aaaaaa",
        ms=4,
        label="evaluated policy",
    )
    ax.plot(
        [getattr(c, cost) for c in front.front],
        [c.top1 * 100 for c in front.front],
        "o",
        color="#3b7dd8",
        ms=5,
        label="Pareto-optimal (all objectives)",
    )
    xs, ys = _staircase([(getattr(c, cost), c.top1) for c in front.candidates])
    ax.step(xs, [y * 100 for y in ys], where="post", color="k", lw=1, label=f"front of top-1 vs {cost}")
    for i, b in enumerate(front.baselines):
        ax.plot(
            getattr(b, cost), b.top1 * 100, "X", color="#d8553b", ms=9, label="uniform baseline" if i == 0 else None
        )
    ax.set_xlabel(f"{cost.replace('_', ' ')} (fraction of dense)")
    ax.legend(fontsize=7, loc="lower right")


def useful_floor(front: ParetoFront) -> float | None:
    """The lowest top-1 (in %) the front plot shows: a margin below the worst front policy or uniform baseline
    that keeps at least half the front's best top-1; None when every policy is above it (nothing to hide).

    Policies near chance accuracy would otherwise squeeze the useful part of the front into a sliver at the top.
    """
    best = max(c.top1 for c in front.front)
    useful = [c.top1 for c in front.front if c.top1 >= best / 2] + [b.top1 for b in front.baselines]
    floor = max(0.0, min(useful) * 100 - 5)
    return floor if any(c.top1 * 100 < floor for c in front.candidates) else None


def pareto_figure(front: ParetoFront, title: str = "") -> Figure:
    """The figure of :func:`pareto_scatter` (yours to save and close)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, dpi=DPI)
    for ax, cost in zip(axes, ("flops_ratio", "params_ratio")):
        _front_panel(ax, front, cost)
    floor = useful_floor(front)
    if floor is not None:
        hidden = sum(c.top1 * 100 < floor for c in front.candidates)
        axes[0].set_ylim(bottom=floor)
        axes[0].text(
            0.01,
            0.99,
            f"{hidden} {'policy' if hidden == 1 else 'policies'} below {floor:.0f}% not shown\n"
            "(amc pareto --min-top1 leaves them out)",
            transform=axes[0].transAxes,
            va="top",
            fontsize=7,
            color="#555555",
        )
    axes[0].set_ylabel("search-val top-1 (%)")
    fit_title(
        fig,
        title
        or f"Pareto front: {len(front.front)} of {len(front.candidates)} policies, hypervolume {front.hypervolume:.4f}",
    )
    return fig


def pareto_scatter(path: Path, front: ParetoFront, title: str = "") -> Path:
    """Top-1 against the FLOPs and the params ratio: every candidate, the front, the uniform baselines."""
    return _save(pareto_figure(front, title), path)
