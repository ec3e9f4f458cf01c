"""INT8 after pruning: size, top-1 and latency of the pruned model quantized by ONNX Runtime, per calibration.

For each dense ResNet-20 (``--dense-seeds``, the cached baselines of the embedded default) the uniform policy at
``--target`` of the FLOPs is applied with ``amc prune``'s engine and fine-tuned ``--finetune-epochs``; the pruned
model is then exported to ONNX and quantized to INT8 with each activation calibration (``minmax``,
``percentile``, ``entropy``) on ``--calib-batches`` training batches. Reported per seed and calibration: test
top-1 of the float model (torch and ONNX Runtime) and of the INT8 model, both files' sizes, the compression
against the dense float32 ONNX file, and both files' ONNX Runtime latency (batch 1, one thread), measured in the
same run. Prints and writes JSON (``results/quantize.json``).

    .venv/bin/python experiments/bench/quantize.py
    .venv/bin/python experiments/bench/quantize.py --dense-seeds 1 --finetune-epochs 1 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from front_quality import dense_config  # the cached dense models (this directory is on sys.path)

from amc.cost import LatencyConfig
from amc.engine import FinetuneSchedule, build_workspace, prune_and_finetune, uniform_policy, uniform_ratio_for
from amc.files import write_json_atomic
from amc.policy import Target
from amc.quantize import CALIBRATION_METHODS, calibration_inputs, int8_report, quantize_int8
from amc.train import evaluate

RESULTS = Path(__file__).parent / "results"


def run_seed(seed: int, target: float, epochs: int, calib_batches: int, cache: Path) -> list[dict]:
    config = dense_config("resnet20", seed, cache)
    ws = build_workspace("resnet20", config.env.data, config.env.checkpoint)
    ratio = uniform_ratio_for(ws.graph, Target("flops", target))
    policy = uniform_policy(ws.graph, ws.identity, ratio)
    result, acc = prune_and_finetune(ws, policy, FinetuneSchedule(epochs=epochs, seed=seed), progress=False)
    test = ws.data.loader("test", 256)
    calib = calibration_inputs(ws.data, calib_batches, seed)
    rows = []
    for method in CALIBRATION_METHODS:
        with tempfile.TemporaryDirectory() as tmp:
            q = quantize_int8(result.model, ws.example_inputs(), calib, Path(tmp), method)
            report = int8_report(q, ws.model, ws.example_inputs(), test, LatencyConfig())
        row = {"seed": seed, "calibration": method, "torch_top1": evaluate(result.model, test), **acc, **report}
        rows.append(row)
        print(
            f"seed {seed} {method:>10}: float {row['onnx_top1']:.2%} int8 {row['int8_top1']:.2%}  "
            f"{report['size_bytes']['int8'] / 1e3:.1f} KB ({report['compression']:.1f}x)  "
            f"{report['onnx_latency_ms']:.3f} / {report['int8_latency_ms']:.3f} ms",
            flush=True,
        )
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for method in CALIBRATION_METHODS:
        mine = [r for r in rows if r["calibration"] == method]
        drops = [100 * (r["onnx_top1"] - r["int8_top1"]) for r in mine]
        out[method] = {
            "float_top1_mean": statistics.mean(100 * r["onnx_top1"] for r in mine),
            "int8_top1_mean": statistics.mean(100 * r["int8_top1"] for r in mine),
            "drop_points_mean": statistics.mean(drops),
            "drop_points_max": max(drops),
            "compression_mean": statistics.mean(r["compression"] for r in mine),
            "latency_ratio_mean": statistics.mean(r["int8_latency_ms"] / r["onnx_latency_ms"] for r in mine),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.2, help="FLOPs kept (default: 0.2)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/amc-bench-baselines"))
    parser.add_argument("--out", type=Path, default=RESULTS / "quantize.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        row
        for seed in range(args.dense_seeds)
        for row in run_seed(seed, args.target, args.finetune_epochs, args.calib_batches, args.cache)
    ]
    result = {
        "model": "resnet20",
        "data": "digits",
        "target_flops": args.target,
        "finetune_epochs": args.finetune_epochs,
        "calib_images": 64 * args.calib_batches,
        "latency": "ONNX Runtime CPU provider, batch 1, 1 thread",
        "summary": summary(rows),
        "runs": rows,
    }
    write_json_atomic(args.out, result)
    for method, s in result["summary"].items():
        print(
            f"{method:>10}: float {s['float_top1_mean']:.2f}  int8 {s['int8_top1_mean']:.2f}  "
            f"drop {s['drop_points_mean']:.2f} (max {s['drop_points_max']:.2f})  {s['compression_mean']:.1f}x  "
            f"int8/float latency {s['latency_ratio_mean']:.2f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
