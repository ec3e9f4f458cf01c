"""How well the latency cost model's estimate predicts the measured latency of physically pruned models.

For each model on the embedded default (digits, 16x16) it builds the latency table (:mod:`amc.latency`) in a
fresh cache directory (so ``build_seconds`` is the cost of a first build; ``--cache-dir`` reuses one), then
draws ``--policies`` random policies (every group's ratio uniform in [0, ``--max-ratio``]), prunes the
dense model physically with each, and measures it whole with the same settings. Per model it reports the
median and 95th percentile of ``|estimate - measured| / measured``, the mean signed error (positive: the
estimate is slower than measured), the fraction of policies whose estimate is at least the measurement,
the Spearman rank correlation of estimate and measurement (what the search's ranking needs), the table's
build seconds and entries. It writes ``experiments/bench/results/latency_estimate.json`` and a scatter plot
(estimate against measured) beside it.

Random weights: latency does not depend on what the weights are.

Usage::

    python experiments/bench/latency_estimate.py --policies 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amc.cost import LatencyConfig, latency_stats
from amc.data import DataConfig
from amc.engine import build_workspace
from amc.files import write_json_atomic
from amc.latency import LatencyTable, cpu_model
from amc.pruning import prune_channels, widths_for
from envs.budget import fewest_widths

DEFAULT_OUT = Path("experiments/bench/results/latency_estimate.json")
MODELS = ("resnet20", "mobilenetv2_small")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registered model names (default: %(default)s)")
    p.add_argument("--policies", type=int, default=50, help="random policies per model (default: 50)")
    p.add_argument("--max-ratio", type=float, default=0.8, help="largest pruning ratio drawn (default: 0.8)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    p.add_argument("--min-run-time", type=float, default=0.05, help="seconds per measurement (default: 0.05)")
    p.add_argument("--grid", type=int, default=5, help="widths per channel axis of the table (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policies (default: 0)")
    p.add_argument("--cache-dir", type=Path, help="latency cache to use (default: a fresh temporary directory)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. how busy the machine was)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    return p.parse_args(argv)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else float("nan")


def bench_model(name: str, config: LatencyConfig, args: argparse.Namespace, cache_dir: Path) -> dict:
    ws = build_workspace(name, DataConfig("digits"))
    fewest = fewest_widths(ws.graph.groups, 0.0, args.max_ratio, 1)
    table = LatencyTable.build(ws.model, ws.graph, config, fewest, cache_dir, desc=f"latency table {name}")
    rng = np.random.default_rng(args.seed)
    shape = ws.spec.input_shape
    estimated, measured = [], []
    for _ in range(args.policies):
        widths = widths_for(ws.graph, {g.name: float(rng.uniform(0.0, args.max_ratio)) for g in ws.graph})
        pruned = prune_channels(ws.model, ws.graph, widths).model
        estimated.append(table.estimate(widths))
        measured.append(latency_stats(pruned, shape, config).median_ms)
    dense_measured = latency_stats(ws.model, shape, config).median_ms
    errors = [abs(e - m) / m for e, m in zip(estimated, measured, strict=True)]
    signed = [(e - m) / m for e, m in zip(estimated, measured, strict=True)]
    return {
        "median_abs_err": statistics.median(errors),
        "p95_abs_err": float(np.percentile(errors, 95)),
        "mean_signed_err": statistics.fmean(signed),
        "estimate_at_least_measured": sum(e >= m for e, m in zip(estimated, measured, strict=True)) / len(errors),
        "spearman": spearman(estimated, measured),
        "build_seconds": table.report.seconds,
        "entries": table.report.entries,
        "measured_entries": table.report.measured,
        "remeasured_outliers": table.report.remeasured,
        "layers": len(table.layers),
        "dense_ms_estimated": table.estimate(ws.graph.dense_widths()),
        "dense_ms_measured_again": dense_measured,
        "fewest_ms": table.report.fewest_ms,
        "policies": args.policies,
        "estimated_ms": estimated,
        "measured_ms": measured,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], models.items(), strict=True):
        m, e = r["measured_ms"], r["estimated_ms"]
        ax.scatter(m, e, s=12, alpha=0.7)
        low, high = min(m + e), max(m + e)
        ax.plot([low, high], [low, high], "k--", lw=1, label="estimate = measured")
        ax.set_title(f"{name}: median |err| {r['median_abs_err']:.1%}, p95 {r['p95_abs_err']:.1%}")
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("estimated latency (ms)")
        ax.legend(loc="upper left")
    s = results["settings"]
    fig.suptitle(f"latency estimate vs measured, batch {s['batch_size']}, {s['threads']} thread(s), {s['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = LatencyConfig(
        batch_size=args.batch_size, threads=args.threads, min_run_time=args.min_run_time, grid=args.grid
    )
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amc-latency-bench-") as fresh:
        cache_dir = args.cache_dir or Path(fresh)
        models = {name: bench_model(name, config, args, cache_dir) for name in args.models}
    result = {
        "settings": {
            "batch_size": args.batch_size,
            "threads": args.threads,
            "min_run_time": args.min_run_time,
            "grid": args.grid,
            "max_ratio": args.max_ratio,
            "policies": args.policies,
            "seed": args.seed,
            "data": "digits 16x16 (embedded default), random weights",
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": time.monotonic() - start,
        },
        "note": args.note,
        "models": models,
    }
    summary = {n: {k: v for k, v in r.items() if k not in ("estimated_ms", "measured_ms")} for n, r in models.items()}
    print(json.dumps({"settings": result["settings"], "models": summary}, indent=2))
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
