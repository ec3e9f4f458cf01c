"""Recovering a pruned model at equal epochs: fine-tuning, learning-rate rewinding, weight rewinding, from scratch
and distillation (the lottery-ticket question of Renda et al., "Comparing rewinding and fine-tuning in neural
network pruning", ICLR 2020, on the embedded default).

For each dense-model seed (``--seeds``) a ResNet-20 is trained on digits for ``--train-epochs`` E (the default
baseline schedule) keeping its weights after epoch E - T (``amc train --keep-epoch``), where T is
``--epochs``. Then for each FLOPs budget (``--targets``) and policy (``uniform``, and ``searched``: the best policy
of a ``--episodes``-episode DDPG search on that dense model), the policy is applied once and the pruned model
recovers for T epochs by each method:

- ``finetune``: the pruned weights, the fine-tuning learning rate (0.01, warm-up and cosine);
- ``lr_rewind``: the pruned weights, the training learning rate (0.1, warm-up and cosine);
- ``weight_rewind``: the kept channels restarted from epoch E - T's weights, the last T epochs of the original
  schedule;
- ``from_scratch``: the pruned architecture re-initialised, trained T epochs at the training learning rate (at
  equal epochs, not its full E-epoch schedule);
- ``distill``: ``finetune`` with the dense model as teacher (weight 0.5, temperature 4).

Every method keeps its best epoch on search-val (as ``amc prune`` does). Reported: test and search-val top-1
per run, and per method the mean and spread over seeds. Prints and writes JSON (``results/retraining.json``).

    .venv/bin/python experiments/bench/retraining.py
    .venv/bin/python experiments/bench/retraining.py --seeds 1 --targets 0.5 --episodes 20 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch
from front_quality import MODELS  # the embedded default's search config (this directory is on sys.path)

from agents.search import SearchConfig, run_search
from amc.baseline import train_baseline
from amc.engine import (
    FinetuneSchedule,
    build_workspace,
    prune_and_finetune,
    uniform_policy,
    uniform_ratio_for,
)
from amc.files import write_json_atomic
from amc.policy import Target, load_policy
from amc.retrain import retraining_for
from amc.train import TrainConfig

RESULTS = Path(__file__).parent / "results"
METHODS = ("finetune", "lr_rewind", "weight_rewind", "from_scratch", "distill")


def _schedule(method: str, epochs: int, seed: int, checkpoint: Path) -> FinetuneSchedule:
    base = FinetuneSchedule(epochs=epochs, seed=seed)
    if method == "lr_rewind":
        return dataclasses.replace(base, lr_rewind=True)
    if method == "distill":
        return dataclasses.replace(base, distill=True)
    if method in ("weight_rewind", "from_scratch"):
        retrain = retraining_for("rewind" if method == "weight_rewind" else "scratch", checkpoint)
        if method == "from_scratch":  # equal epochs: the last T epochs' budget, a full cosine over them
            retrain = dataclasses.replace(retrain, schedule=dataclasses.replace(retrain.schedule, epochs=epochs))
        return dataclasses.replace(base, retrain=retrain)
    return base


def _searched(config: SearchConfig, checkpoint: Path, target: float, episodes: int, seed: int):
    search = config.replace(
        episodes=episodes, seed=seed, workers=0, env=config.env.replace(checkpoint=str(checkpoint), target_ratio=target)
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_search(search, Path(tmp) / "s", track=False, progress=False)
        return load_policy(Path(tmp) / "s" / "best_policy.json")


def run_seed(seed: int, args: argparse.Namespace, root: Path) -> list[dict]:
    base = SearchConfig.from_yaml(MODELS["resnet20"])
    schedule = TrainConfig(**{**vars(base.baseline), "seed": seed, "epochs": args.train_epochs})
    dense_dir = root / f"dense{seed}"
    train_baseline(
        "resnet20", base.env.data, schedule, dense_dir, progress=False, keep_epoch=args.train_epochs - args.epochs
    )
    checkpoint = dense_dir / "model.pt"
    ws = build_workspace("resnet20", base.env.data, str(checkpoint))
    rows = []
    for target in args.targets:
        policies = {
            "uniform": uniform_policy(ws.graph, ws.identity, uniform_ratio_for(ws.graph, Target("flops", target))),
            "searched": _searched(base, checkpoint, target, args.episodes, seed),
        }
        for name, policy in policies.items():
            for method in METHODS:
                _, acc = prune_and_finetune(
                    ws, policy, _schedule(method, args.epochs, seed, checkpoint), progress=False
                )
                row = {"seed": seed, "target": target, "policy": name, "method": method, **acc}
                rows.append(row)
                print(
                    f"seed {seed} flops {target:.0%} {name:>8} {method:>13}: test {acc['top1']:.2%} "
                    f"(before {acc['top1_before_finetune']:.2%}), search-val {acc['val_top1']:.2%}",
                    flush=True,
                )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["target"], r["policy"]) for r in rows})
    for target, policy in keys:
        for method in METHODS:
            mine = [r for r in rows if (r["target"], r["policy"], r["method"]) == (target, policy, method)]
            test = [100 * r["top1"] for r in mine]
            val = [100 * r["val_top1"] for r in mine]
            out.append(
                {
                    "target": target,
                    "policy": policy,
                    "method": method,
                    "test_mean": statistics.mean(test),
                    "test_spread": max(test) - min(test),
                    "val_mean": statistics.mean(val),
                    "n": len(mine),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--epochs", type=int, default=5, help="recovery epochs T of every method (default: 5)")
    parser.add_argument("--train-epochs", type=int, default=15, help="dense training epochs E (default: 15)")
    parser.add_argument("--episodes", type=int, default=100, help="DDPG episodes of the searched policy")
    parser.add_argument("--out", type=Path, default=RESULTS / "retraining.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for seed in range(args.seeds) for row in run_seed(seed, args, Path(tmp))]
    result = {
        "model": "resnet20",
        "data": "digits",
        "recovery_epochs": args.epochs,
        "train_epochs": args.train_epochs,
        "rewind_epoch": args.train_epochs - args.epochs,
        "search_episodes": args.episodes,
        "summary": summary(rows),
        "methods": {m: [r for r in rows if r["method"] == m] for m in METHODS},
    }
    write_json_atomic(args.out, result)
    for s in result["summary"]:
        print(
            f"flops {s['target']:.0%} {s['policy']:>8} {s['method']:>13}: test {s['test_mean']:.2f} "
            f"(spread {s['test_spread']:.2f}), search-val {s['val_mean']:.2f}"
        )
    print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
