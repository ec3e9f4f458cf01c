"""Search quality on the embedded default: uniform vs random search vs DDPG, same episode budget.

For each FLOPs target and seed, each method runs one search; its best policy (by search-val top-1)
is evaluated on the test split without fine-tuning. Prints a table and writes JSON:
``dense_test_top1`` and, per target (``flops_0.2``, ``flops_0.5``), per method, ``test_top1`` (one per
seed) and ``test_top1_mean``.

    .venv/bin/python experiments/bench/search_quality.py            # 300 episodes, 3 seeds (~30 min on 2 cores)
    .venv/bin/python experiments/bench/search_quality.py --episodes 60 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agents.search import SearchConfig, run_search
from amc.data import DataConfig
from amc.engine import build_workspace
from amc.train import evaluate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-resnet20-flops50.yaml"
METHODS = ("uniform", "random", "ddpg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on small models)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = SearchConfig.from_yaml(CONFIG).replace(episodes=args.episodes)
    results: dict = {"episodes": args.episodes, "seeds": list(range(args.seeds)), "model": base.env.model, "data": "digits"}
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            key = f"flops_{target:g}"
            results[key] = {}
            for method in args.methods:
                scores, seconds = [], []
                for seed in range(args.seeds):
                    config = base.replace(agent=method, seed=seed, env=base.env.replace(target_ratio=target))
                    start = time.perf_counter()
                    result = run_search(config, Path(tmp) / f"{key}-{method}-{seed}", track=False, progress=False)
                    seconds.append(time.perf_counter() - start)
                    scores.append(result.best_test_top1)
                    print(f"{key:>9} {method:>8} seed {seed}: best val {result.best.top1:.2%}  test {result.best_test_top1:.2%}"
                          f"  ({seconds[-1]:.0f} s)", flush=True)
                    if "dense_test_top1" not in results:
                        ws = build_workspace(config.env.model, DataConfig("digits"), config.env.checkpoint or _ckpt(config))
                        results["dense_test_top1"] = evaluate(ws.model, ws.data.loader("test", 256))
                results[key][method] = {"test_top1": scores, "test_top1_mean": statistics.fmean(scores), "seconds": seconds}
    _report(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _ckpt(config: SearchConfig) -> str:
    from agents.search import resolve_checkpoint

    return resolve_checkpoint(config, Path(".cache/baselines"), progress=False).env.checkpoint


def _report(results: dict, args: argparse.Namespace) -> None:
    print(f"\ndense test top-1: {results['dense_test_top1']:.2%}   ({args.episodes} episodes, {args.seeds} seeds)")
    for target in args.targets:
        key = f"flops_{target:g}"
        row = "  ".join(f"{m} {results[key][m]['test_top1_mean']:.2%}" for m in args.methods)
        print(f"{key}: {row}")


if __name__ == "__main__":
    raise SystemExit(main())
