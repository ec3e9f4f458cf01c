"""Plots users would rather look at than read (written as PNG files)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amc.service.front import ParetoFront


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def policy_bars(path: Path, ratios: Mapping[str, float], uniform: float | None = None, title: str = "") -> Path:
    """Bar plot of per-group pruning ratios, with the uniform baseline's ratio as a line."""
    plt = _pyplot()
    names = list(ratios)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4.2))
    ax.bar(range(len(names)), [ratios[n] for n in names], color="#3b7dd8", label="searched policy")
    if uniform is not None:
        ax.axhline(uniform, color="#d8553b", ls="--", lw=1.5, label=f"uniform ({uniform:.2f})")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pruning ratio (fraction of channels removed)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "Per-group pruning ratios")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The 2-D front (min x, max y) of ``points`` as a step line."""
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            xs.append(x)
            ys.append(y)
            best = y
    return xs, ys


def pareto_scatter(path: Path, front: ParetoFront, title: str = "") -> Path:
    """Top-1 against the FLOPs and the params ratio: every candidate, the front, the uniform baselines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    keys = front.keys
    for ax, cost in zip(axes, ("flops_ratio", "params_ratio")):
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
    axes[0].set_ylabel("search-val top-1 (%)")
    fig.suptitle(
        title
        or f"Pareto front: {len(front.front)} of {len(front.candidates)} policies, hypervolume {front.hypervolume:.4f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
