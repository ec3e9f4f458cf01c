"""Where a budget tells methods apart: uniform pruning of dense models at several FLOPs budgets, before and after
a short fine-tuning.

A budget at which uniform pruning already recovers the dense accuracy after fine-tuning cannot separate search
methods; one at which it stays at chance cannot either. This is how the MNIST-1D presets' budgets were chosen.
For each ``--checkpoint`` (a dense model from ``amc train``), the uniform policy at each ``--targets`` FLOPs ratio
is applied by ``amc prune``'s engine (BatchNorm re-estimated) and fine-tuned ``--finetune-epochs``; test top-1
before and after. Prints and writes JSON (``results/uniform_budgets_<data>.json``).

    .venv/bin/amc train --model resnet20_1d --data mnist1d --epochs 30 --out /tmp/r1d
    .venv/bin/amc train --model resnet20_1d_wide --data mnist1d --epochs 30 --out /tmp/r1dw
    .venv/bin/python experiments/bench/uniform_budgets.py --data mnist1d --checkpoints /tmp/r1d/model.pt /tmp/r1dw/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from amc.checkpoint import load_model
from amc.data import DataConfig
from amc.engine import FinetuneSchedule, build_workspace, prune_and_finetune, uniform_policy, uniform_ratio_for
from amc.files import write_json_atomic
from amc.policy import Target
from amc.train import evaluate

RESULTS = Path(__file__).parent / "results"


def run_model(checkpoint: Path, data: DataConfig, targets: list[float], epochs: int) -> dict:
    name = load_model(checkpoint).spec.name
    ws = build_workspace(name, data, str(checkpoint))
    row = {"model": name, "dense_test_top1": evaluate(ws.model, ws.data.loader("test", 256)), "targets": {}}
    for target in targets:
        ratio = uniform_ratio_for(ws.graph, Target("flops", target))
        policy = uniform_policy(ws.graph, ws.identity, ratio)
        _, acc = prune_and_finetune(ws, policy, FinetuneSchedule(epochs=epochs), progress=False)
        row["targets"][f"flops_{target:g}"] = {"ratio": ratio, **acc}
        print(
            f"{name} flops {target:g}: test {acc['top1_before_finetune']:.2%} -> {acc['top1']:.2%} "
            f"(dense {row['dense_test_top1']:.2%})",
            flush=True,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="dense model.pt files")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.1, 0.05])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: results/uniform_budgets_<data>.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = DataConfig(args.data)
    rows = [run_model(c, data, args.targets, args.finetune_epochs) for c in args.checkpoints]
    out = args.out or RESULTS / f"uniform_budgets_{args.data}.json"
    write_json_atomic(out, {"data": args.data, "finetune_epochs": args.finetune_epochs, "models": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
