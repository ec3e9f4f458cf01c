"""Latency of the same models under the two latency backends: eager PyTorch and ONNX Runtime.

For each model on the embedded default (digits, 16x16) and each batch size it measures the dense model and
the model pruned uniformly to keep half of every group's channels (``--keep``), under ``torch`` and under
``onnxruntime`` (:mod:`amc.onnx_latency`: the exported ONNX graph in an ONNX Runtime session with its
default graph optimisations), alternating backends for ``--rounds`` rounds in the same run, each a
:func:`amc.cost.latency_stats` measurement (median of ``torch.utils.benchmark``'s blocked runs) with
``--threads`` intra-op threads. Per model, batch and backend it reports the median over rounds of the
dense and the pruned model's milliseconds, the spread (the median of the rounds' interquartile ranges) and
the pruned / dense ratio. The machine's load average before and after is stored with the results (a shared
machine adds noise). Writes ``experiments/bench/results/latency_backends.json``.

Random weights: latency does not depend on what the weights are.

Usage::

    python experiments/bench/latency_backends.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from amc.cost import LATENCY_BACKENDS, LatencyConfig, latency_stats
from amc.data import DataConfig
from amc.engine import build_workspace
from amc.files import write_json_atomic
from amc.latency import cpu_model
from amc.onnx_latency import runtime_version
from amc.pruning import prune_channels, widths_for

DEFAULT_OUT = Path("experiments/bench/results/latency_backends.json")
MODELS = ("resnet20", "mobilenetv2_small")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registered model names (default: %(default)s)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64], help="batch sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of channels the pruned model keeps (default: 0.5)")
    p.add_argument("--rounds", type=int, default=5, help="alternating measurements per backend (default: 5)")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement (default: 0.2)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. how busy the machine was)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    return p.parse_args(argv)


def bench_model(name: str, args: argparse.Namespace) -> dict:
    ws = build_workspace(name, DataConfig("digits"))
    pruned = prune_channels(ws.model, ws.graph, widths_for(ws.graph, {g.name: 1 - args.keep for g in ws.graph})).model
    shape = tuple(ws.spec.input_shape)
    out: dict = {}
    for batch in args.batch_sizes:
        configs = {
            b: LatencyConfig(batch_size=batch, threads=args.threads, min_run_time=args.min_run_time, backend=b)
            for b in LATENCY_BACKENDS
        }
        runs: dict[str, dict[str, list]] = {b: {"dense": [], "pruned": []} for b in LATENCY_BACKENDS}
        for _ in range(args.rounds):
            for backend, config in configs.items():
                for which, model in (("dense", ws.model), ("pruned", pruned)):
                    runs[backend][which].append(latency_stats(model, shape, config))
        out[f"batch{batch}"] = {backend: _summary(r) for backend, r in runs.items()}
        out[f"batch{batch}"]["torch_over_onnxruntime_dense"] = (
            out[f"batch{batch}"]["torch"]["dense_ms"] / out[f"batch{batch}"]["onnxruntime"]["dense_ms"]
        )
    return out


def _summary(runs: dict[str, list]) -> dict[str, float]:
    dense = statistics.median(s.median_ms for s in runs["dense"])
    pruned = statistics.median(s.median_ms for s in runs["pruned"])
    return {
        "dense_ms": dense,
        "dense_iqr_ms": statistics.median(s.iqr_ms for s in runs["dense"]),
        "pruned_ms": pruned,
        "pruned_iqr_ms": statistics.median(s.iqr_ms for s in runs["pruned"]),
        "pruned_over_dense": pruned / dense,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.monotonic()
    models = {name: bench_model(name, args) for name in args.models}
    result = {
        "settings": {
            "batch_sizes": args.batch_sizes,
            "threads": args.threads,
            "keep": args.keep,
            "rounds": args.rounds,
            "min_run_time": args.min_run_time,
            "data": "digits 16x16 (embedded default), random weights",
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": runtime_version(),
            "python": platform.python_version(),
            "seconds": time.monotonic() - start,
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        "note": args.note,
        "models": models,
    }
    print(json.dumps(result, indent=2))
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
