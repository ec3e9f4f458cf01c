"""Sensitivity analysis: prune each group alone at 10%..90% and measure search-val accuracy."""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path

from amc.engine import Workspace, workspace_calibration
from amc.progress import Progress
from amc.pruning import CRITERIA, DEFAULT_CRITERION, prune_channels, widths_for
from amc.train import evaluate, recalibrate_bn_seeded

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SensitivityRow:
    group: str
    ratio: float
    top1: float


def sensitivity(
    ws: Workspace,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    criterion: str = DEFAULT_CRITERION,
    bn_batches: int = 8,
    progress: bool = True,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[float, list[SensitivityRow]]:
    """Returns the dense search-val top-1 and one row per (group, ratio).

    Args:
        ws: The dense model, its data and traced groups (the model stays on the CPU, where it is pruned).
        ratios: Pruning ratios tried for each group.
        criterion: Importance criterion that picks the removed channels; a gradient-based one (taylor) reads
            the gradients of one training batch, the batch ``amc prune --seed`` would use.
        bn_batches: Training batches that re-estimate BatchNorm statistics after pruning (0: off).
        progress: Show progress (a bar on a terminal, else a line every few seconds; see :mod:`amc.progress`).
        device: Torch device (``cpu``, ``cuda``, ``cuda:1``) of the BatchNorm re-estimation and the evaluations.
        seed: Seed of the training batches drawn for BatchNorm re-estimation and gradients (as ``amc prune``'s).
    """
    val = ws.data.loader("val", 256)
    calib, grad = workspace_calibration(ws, seed, bn_batches)
    grad_batch = grad if CRITERIA.get(criterion).needs_batch else None
    dense_top1 = evaluate(copy.deepcopy(ws.model).to(device), val)
    rows = []
    bar = Progress(len(ws.graph) * len(ratios), "sensitivity", "pruned model", enabled=progress)
    for group in ws.graph:
        for ratio in ratios:
            widths = widths_for(ws.graph, {group.name: ratio})
            result = prune_channels(ws.model, ws.graph, widths, criterion, grad_batch)
            pruned = result.model.to(device)
            if bn_batches:
                recalibrate_bn_seeded(pruned, calib, seed)
            rows.append(SensitivityRow(group.name, ratio, evaluate(pruned, val)))
            bar.update()
    bar.close()
    return dense_top1, rows


def write_sensitivity(out_dir: Path, dense_top1: float, rows: list[SensitivityRow]) -> tuple[Path, Path]:
    """Writes ``sensitivity.csv`` and ``sensitivity.png`` (one accuracy curve per group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "sensitivity.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "ratio", "top1"])
        writer.writerows([(r.group, f"{r.ratio:.2f}", f"{r.top1:.4f}") for r in rows])
    fig, ax = plt.subplots(figsize=(8, 5))
    groups = list(dict.fromkeys(r.group for r in rows))
    cmap = plt.get_cmap("viridis", max(len(groups), 2))
    for i, name in enumerate(groups):
        pts = [(r.ratio, r.top1 * 100) for r in rows if r.group == name]
        ax.plot(*zip(*pts), marker="o", ms=3, color=cmap(i), label=name)
    ax.axhline(dense_top1 * 100, color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("pruning ratio of the group (fraction of channels removed)")
    ax.set_ylabel("search-val top-1 (%)")
    ax.set_title("Per-group pruning sensitivity (BN recalibrated, no fine-tuning)")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    png_path = out_dir / "sensitivity.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
