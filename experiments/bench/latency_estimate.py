"""How well the latency cost model's estimate predicts the measured latency of physically pruned models.

Models: ResNet-20 (CIFAR-style) and MobileNetV2-small (depthwise) on the embedded default (digits, 16x16),
and a torchvision ImageNet classifier (``torchvision:resnet18``) at 224x224; random weights (latency does
not depend on what the weights are). For every model and every thread setting (``--threads``: 1 and all
cores by default) it

1. builds the latency table (:mod:`amc.latency`) in a fresh cache directory, so ``build_seconds`` is the
   cost of a first build (``--cache-dir`` reuses one);
2. draws ``--policies`` random policies across the whole range of ratios: each policy a level uniform in
   [0, ``--max-ratio``] and each group's ratio that level plus a uniform offset in [-``--spread``,
   ``--spread``], clipped to [0, ``--max-ratio``] (the same policies for every thread setting);
3. prunes the dense model physically with each policy and measures it whole, twice, with the statistic
   the table uses (:func:`amc.latency.fastest_latency`): two passes over all policies (the second prunes
   again), so the two measurements of a policy are minutes apart.

Per model and thread setting it reports, against the mean of the two measurements ``m``:
``median_abs_err`` / ``p95_abs_err`` (``|estimate - m| / m``), the mean signed error (positive: the estimate
is slower), the fraction of policies estimated at least as slow as measured and the Spearman rank
correlation of estimate and measurement (what the search's ranking needs). Beside it the **noise floor**
of the same run: ``repeat_median_abs_diff`` / ``repeat_p95_abs_diff``, the median and 95th percentile of
``|m1 - m2| / m``. The mean of two measurements is itself off by about half that (for independent,
identically distributed noise ``(m1 + m2) / 2 - true`` is distributed like ``(m1 - m2) / 2``), so an
estimator error near half the repeat difference is measurement noise, not model error. Per model: the
table's build seconds and entries next to the model's layers, parameters and FLOPs (how the table grows
with the model) and how well the residual fits its calibration models. A model's top-level
``median_abs_err`` / ``p95_abs_err`` are the worst over its thread settings.

It writes ``experiments/bench/results/latency_estimate.json`` (``--out``) and a scatter plot beside it
(estimate against measured; a horizontal bar spans a policy's two measurements).

Usage::

    python experiments/bench/latency_estimate.py --note "idle machine"
    python experiments/bench/latency_estimate.py --models resnet20 mobilenetv2_small --batch-size 64 \\
        --out experiments/bench/results/latency_estimate_b64.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.cost import LatencyConfig, count_flops, count_params
from amc.data import DataConfig
from amc.engine import build_workspace
from amc.files import write_json_atomic
from amc.groups import ModelGraph
from amc.latency import LatencyTable, cpu_model, fastest_latency
from amc.models import TORCHVISION_PREFIX, ModelSpec, create_model
from amc.pruning import prune_channels, widths_for
from envs.budget import fewest_widths

DEFAULT_OUT = Path("experiments/bench/results/latency_estimate.json")
MODELS = ("resnet20", "mobilenetv2_small", "torchvision:resnet18")
IMAGENET = {"in_channels": 3, "num_classes": 1000, "input_size": 224}
"""What a torchvision model is built for."""


def all_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="model names (default: %(default)s)")
    p.add_argument("--policies", type=int, default=50, help="random policies per model (default: 50)")
    p.add_argument("--max-ratio", type=float, default=0.8, help="largest pruning ratio drawn (default: 0.8)")
    p.add_argument("--spread", type=float, default=0.25, help="groups' ratios around a policy's level (default: 0.25)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1, 0], help="intra-op thread settings, 0: all cores (default: 1 0)"
    )
    p.add_argument("--min-run-time", type=float, default=0.05, help="seconds per measurement (default: 0.05)")
    p.add_argument("--grid", type=int, default=5, help="widths per channel axis of the table (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policies (default: 0)")
    p.add_argument("--cache-dir", type=Path, help="latency cache to use (default: a fresh temporary directory)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. how busy the machine was)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Subject:
    """A dense model to prune: its traced graph and input shape (batch excluded)."""

    name: str
    model: nn.Module
    graph: ModelGraph
    shape: tuple[int, ...]


def load(name: str) -> Subject:
    """A registered model on digits, or a torchvision classifier (``torchvision:NAME``) at 224x224."""
    if name.startswith(TORCHVISION_PREFIX):
        spec = ModelSpec(name, **IMAGENET)
        model = create_model(spec).eval()
        return Subject(name, model, ModelGraph(model, spec.example_inputs()), spec.input_shape)
    ws = build_workspace(name, DataConfig("digits"))
    return Subject(name, ws.model, ws.graph, ws.spec.input_shape)


def draw_policies(subject: Subject, args: argparse.Namespace) -> list[dict[str, float]]:
    rng = np.random.default_rng(args.seed)
    policies = []
    for _ in range(args.policies):
        level = rng.uniform(0.0, args.max_ratio)
        policies.append(
            {
                g.name: float(np.clip(level + rng.uniform(-args.spread, args.spread), 0.0, args.max_ratio))
                for g in subject.graph
            }
        )
    return policies


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else float("nan")


def measure_pass(subject: Subject, policies: list[dict[str, float]], config: LatencyConfig) -> list[float]:
    """Each policy's physically pruned model, measured once."""
    out = []
    for ratios in policies:
        pruned = prune_channels(subject.model, subject.graph, widths_for(subject.graph, ratios)).model
        out.append(fastest_latency(pruned, subject.shape, config))
    return out


def accuracy(estimated: list[float], first: list[float], second: list[float]) -> dict:
    """Estimator error against the mean of two measurements, and the two measurements' own difference."""
    e, m1, m2 = np.array(estimated), np.array(first), np.array(second)
    m = (m1 + m2) / 2
    err, signed, repeat = np.abs(e - m) / m, (e - m) / m, np.abs(m1 - m2) / m
    return {
        "median_abs_err": float(np.median(err)),
        "p95_abs_err": float(np.percentile(err, 95)),
        "repeat_median_abs_diff": float(np.median(repeat)),
        "repeat_p95_abs_diff": float(np.percentile(repeat, 95)),
        "mean_signed_err": float(signed.mean()),
        "estimate_at_least_measured": float((e >= m).mean()),
        "spearman": spearman(list(e), list(m)),
        "spearman_repeat": spearman(list(m1), list(m2)),
    }


def bench_threads(subject: Subject, threads: int, args: argparse.Namespace, cache_dir: Path) -> dict:
    """Builds the table of one thread setting and compares its estimates with measurements."""
    torch.set_num_threads(threads)
    config = LatencyConfig(batch_size=args.batch_size, threads=threads, min_run_time=args.min_run_time, grid=args.grid)
    fewest = fewest_widths(subject.graph.groups, 0.0, args.max_ratio, 1)
    label = f"latency table {subject.name} ({threads} thread{'s' if threads > 1 else ''})"
    table = LatencyTable.build(subject.model, subject.graph, config, fewest, cache_dir, desc=label)
    policies = draw_policies(subject, args)
    estimated = [table.estimate(widths_for(subject.graph, ratios)) for ratios in policies]
    start = time.monotonic()
    first = measure_pass(subject, policies, config)
    second = measure_pass(subject, policies, config)
    levels = [statistics.fmean(r.values()) for r in policies]
    r = table.report
    result = accuracy(estimated, first, second)
    mean = (np.array(first) + np.array(second)) / 2
    worst = np.argsort(-np.abs(np.array(estimated) - mean) / mean)[:3]
    return {
        **result,
        "worst": [
            {"mean_ratio": levels[i], "estimated_ms": estimated[i], "measured_ms": [first[i], second[i]]} for i in worst
        ],
        "build_seconds": r.seconds,
        "entries": r.entries,
        "measured_entries": r.measured,
        "remeasured_outliers": r.remeasured,
        "calibration_error": r.calibration_error,
        "calibration_ms": [list(c) for c in r.calibration],
        "dense_ms_estimated": table.estimate(subject.graph.dense_widths()),
        "fewest_ms": r.fewest_ms,
        "measure_seconds": time.monotonic() - start,
        "mean_ratio": levels,
        "estimated_ms": estimated,
        "measured_ms": [first, second],
    }


def bench_model(name: str, args: argparse.Namespace, cache_dir: Path) -> dict:
    subject = load(name)
    by_threads = {}
    for t in args.threads:
        threads = t or all_cores()
        by_threads[str(threads)] = bench_threads(subject, threads, args, cache_dir)
    first = next(iter(by_threads.values()))
    return {
        "median_abs_err": max(r["median_abs_err"] for r in by_threads.values()),
        "p95_abs_err": max(r["p95_abs_err"] for r in by_threads.values()),
        "repeat_median_abs_diff": max(r["repeat_median_abs_diff"] for r in by_threads.values()),
        "repeat_p95_abs_diff": max(r["repeat_p95_abs_diff"] for r in by_threads.values()),
        "input_shape": [args.batch_size, *subject.shape],
        "layers": len(subject.graph.layer_channels(subject.graph.dense_widths())),
        "groups": len(subject.graph.groups),
        "params": count_params(subject.model),
        "flops": count_flops(subject.model, torch.zeros(1, *subject.shape)),
        "entries": first["entries"],
        "build_seconds": {t: r["build_seconds"] for t, r in by_threads.items()},
        "threads": by_threads,
    }


SERIES = ("estimated_ms", "measured_ms", "mean_ratio", "calibration_ms")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    threads = list(next(iter(models.values()))["threads"])
    fig, axes = plt.subplots(len(threads), len(models), figsize=(4.8 * len(models), 4.4 * len(threads)), squeeze=False)
    for col, (name, r) in enumerate(models.items()):
        for row, t in enumerate(threads):
            ax, s = axes[row][col], r["threads"][t]
            m1, m2 = np.array(s["measured_ms"][0]), np.array(s["measured_ms"][1])
            m, e = (m1 + m2) / 2, np.array(s["estimated_ms"])
            ax.errorbar(m, e, xerr=np.abs(m1 - m2) / 2, fmt="o", ms=3, alpha=0.7, elinewidth=0.8)
            low, high = float(min(m.min(), e.min())), float(max(m.max(), e.max()))
            ax.plot([low, high], [low, high], "k--", lw=1, label="estimate = measured")
            ax.set_title(
                f"{name}, {t} thread(s)\n|err| median {s['median_abs_err']:.1%} / p95 {s['p95_abs_err']:.1%}; "
                f"repeat {s['repeat_median_abs_diff']:.1%} / {s['repeat_p95_abs_diff']:.1%}",
                fontsize=9,
            )
            ax.set_xlabel("measured latency (ms, mean of two)")
            ax.set_ylabel("estimated latency (ms)")
            ax.legend(loc="upper left", fontsize=8)
    st = results["settings"]
    fig.suptitle(f"latency estimate vs measured, batch {st['batch_size']}, {st['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(models: dict) -> dict:
    """``models`` without the per-policy series."""
    return {
        name: {
            **{k: v for k, v in r.items() if k != "threads"},
            "threads": {t: {k: v for k, v in s.items() if k not in SERIES} for t, s in r["threads"].items()},
        }
        for name, r in models.items()
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amc-latency-bench-") as fresh:
        cache_dir = args.cache_dir or Path(fresh)
        models = {name: bench_model(name, args, cache_dir) for name in args.models}
    result = {
        "settings": {
            "batch_size": args.batch_size,
            "threads": [t or all_cores() for t in args.threads],
            "min_run_time": args.min_run_time,
            "grid": args.grid,
            "max_ratio": args.max_ratio,
            "spread": args.spread,
            "policies": args.policies,
            "seed": args.seed,
            "data": "digits 16x16 (embedded default); torchvision models at 3x224x224; random weights",
            "cpu": cpu_model(),
            "cores": all_cores(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": time.monotonic() - start,
        },
        "note": args.note,
        "models": models,
    }
    print(json.dumps({"settings": result["settings"], "models": summary(models)}, indent=2))
    for name, r in models.items():
        print(
            f"{name}: {r['layers']} layers, {r['params'] / 1e6:.2f} M params, {r['flops'] / 1e6:.1f} MFLOPs -> "
            f"{r['entries']} entries, built in "
            + ", ".join(f"{s:.0f} s ({t} threads)" for t, s in r["build_seconds"].items())
        )
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
