"""Plots users would rather look at than read (written as PNG files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


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


def search_curves(path: Path, episodes: Sequence[int], rewards: Sequence[float], top1: Sequence[float], warmup: int = 0) -> Path:
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
