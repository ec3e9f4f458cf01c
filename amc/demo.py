"""`make demo`: the main job on the embedded default (digits, ResNet-20, 50% FLOPs).

Trains (or reuses) the dense baseline, applies the uniform policy that meets the FLOPs target,
fine-tunes, and prints a before/after table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from amc.baseline import cached_baseline
from amc.cost import LatencyConfig
from amc.data import DataConfig
from amc.engine import FinetuneSchedule, build_workspace, cost_report, prune_and_finetune, uniform_policy, uniform_ratio_for
from amc.policy import Target
from amc.train import TrainConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="FLOPs ratio to keep (default: 0.5)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    data = DataConfig("digits")
    ckpt = cached_baseline("resnet20", data, TrainConfig(epochs=15), Path(".cache/baselines"))
    ws = build_workspace("resnet20", data, str(ckpt))
    target = Target("flops", args.target)
    ratio = uniform_ratio_for(ws.graph, target)
    policy = uniform_policy(ws.graph, ws.identity, ratio)
    result, acc = prune_and_finetune(ws, policy, FinetuneSchedule(epochs=args.finetune_epochs))
    report = cost_report(ws, result.model, LatencyConfig())
    dense_top1 = evaluate(ws.model, ws.data.loader("test", 256))
    print(f"\nResNet-20 on digits, FLOPs target {args.target:.0%} (uniform ratio {ratio:.3f} in every group)")
    print(f"{'':<26}{'top-1 (test)':>14}{'MFLOPs':>10}{'params':>10}{'latency ms':>12}")
    print(f"{'dense':<26}{dense_top1:>14.2%}{ws.graph.dense_cost.flops / 1e6:>10.2f}{ws.graph.dense_cost.params:>10,}{report['dense_latency_ms']:>12.3f}")
    print(f"{'uniform, no fine-tune':<26}{acc['top1_before_finetune']:>14.2%}{report['flops'] / 1e6:>10.2f}{report['params']:>10,}{report['latency_ms']:>12.3f}")
    print(f"{'uniform, fine-tuned':<26}{acc['top1']:>14.2%}{report['flops'] / 1e6:>10.2f}{report['params']:>10,}{report['latency_ms']:>12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
