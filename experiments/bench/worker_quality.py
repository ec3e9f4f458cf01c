"""Search quality with N rollout workers against in-process: the same episode budget, DDPG, several seeds.

With N workers an episode whose plan depends on learning is planned N - 1 episodes behind the learner
(the default staleness bound), so its actor has learned from fewer episodes than in-process. This
measures whether that costs quality: for each seed, a DDPG search of the embedded default (ResNet-20 on
digits, ``experiments/configs/digits-resnet20-flops50.yaml``) at a FLOPs target runs in-process (workers
0) and on N Ray actors, with the same budget. Prints and writes JSON with, per worker count, each seed's
best search-val top-1 and reward (and the best policy's test top-1), their mean and sd, the staleness
observed, and the same-seed check: a one-worker Ray search gives exactly the in-process episodes.

    .venv/bin/python experiments/bench/worker_quality.py            # 300 episodes, seeds 0 1 2, workers 0 2
    .venv/bin/python experiments/bench/worker_quality.py --workers 0 2 4 --target 0.5
    .venv/bin/python experiments/bench/worker_quality.py --quick    # a short check (writes *_quick.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.parallel import local_cpus
from agents.search import SearchConfig, resolve_checkpoint, run_search
from amc.files import write_json_atomic

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-resnet20-flops50.yaml"
RESULTS = Path(__file__).parent / "results"
METRICS = ("best_top1", "best_reward", "best_test_top1")


def search(config: SearchConfig, workers: int, seed: int, root: Path) -> dict[str, Any]:
    """One search; its best (search-val top-1, reward, test top-1), staleness and episode records."""
    out = root / f"w{workers}-s{seed}"
    started = time.perf_counter()
    result = run_search(config.replace(workers=workers, seed=seed), out, track=False, progress=False)
    summary = json.loads((out / "search.json").read_text())
    return {
        "seed": seed,
        "best_top1": result.best.top1,
        "best_reward": result.best.reward,
        "best_test_top1": result.best_test_top1,
        "best_flops_ratio": result.best.flops_ratio,
        "staleness": summary["staleness"],
        "wall_s": time.perf_counter() - started,
        "episodes": summary["episodes"],
    }


def identical(a: list[dict], b: list[dict]) -> bool:
    """Whether two searches played the same episodes (policies, planning points and results)."""
    if [e["episode"] for e in a] != [e["episode"] for e in b]:
        return False
    for x, y in zip(a, b, strict=True):
        if x["ratios"] != y["ratios"] or x["planned_after"] != y["planned_after"]:
            return False
        if any(abs(x[k] - y[k]) > 1e-9 * max(1.0, abs(y[k])) for k in ("reward", "top1", "flops_ratio")):
            return False
    return True


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        out[f"{key}_mean"] = statistics.fmean(values)
        out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts (0: in-process)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=300, help="episodes per search (warm-up included)")
    parser.add_argument("--warmup", type=int, default=None, help="DDPG warm-up episodes (default: the config's)")
    parser.add_argument("--target", type=float, default=0.2, help="FLOPs target (env.target_ratio)")
    parser.add_argument("--quick", action="store_true", help="a short check: 12 episodes, 4 of warm-up")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: results/worker_quality.json)")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.warmup = 12, 4
    out = args.out or RESULTS / ("worker_quality_quick.json" if args.quick else "worker_quality.json")
    import ray

    config = resolve_checkpoint(SearchConfig.from_yaml(CONFIG), progress=False)
    ddpg = config.ddpg if args.warmup is None else dataclasses.replace(config.ddpg, warmup_episodes=args.warmup)
    config = config.replace(
        agent="ddpg",
        episodes=args.episodes,
        ddpg=ddpg,
        checkpoint_every=10**6,
        env=config.env.replace(target_ratio=args.target),
    )
    config, note = config.with_room_to_learn()
    if note:
        print(note, flush=True)
    ray.init(address="local", num_cpus=max(local_cpus(), *args.workers), include_dashboard=False, log_to_driver=False)
    runs: dict[int, list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in args.workers:
                for seed in args.seeds:
                    run = search(config, workers, seed, Path(tmp))
                    runs.setdefault(workers, []).append(run)
                    print(
                        f"workers {workers} seed {seed}: best val top-1 {run['best_top1']:.2%}, reward "
                        f"{run['best_reward']:.4f}, test top-1 {run['best_test_top1']:.2%}, staleness max "
                        f"{run['staleness']['max']} ({run['wall_s']:.0f} s)",
                        flush=True,
                    )
            seed = args.seeds[0]
            in_process = next((r for r in runs.get(0, []) if r["seed"] == seed), None)
            in_process = in_process or search(config, 0, seed, Path(tmp) / "check")
            one_worker = search(config, 1, seed, Path(tmp) / "check")
            same = identical(one_worker["episodes"], in_process["episodes"])
    finally:
        ray.shutdown()
    results = {
        "config": str(CONFIG.relative_to(CONFIG.parents[2])),
        "target_flops_ratio": args.target,
        "episodes": config.episodes,
        "warmup_episodes": config.ddpg.warmup_episodes,
        "seeds": args.seeds,
        "workers": args.workers,
        "cpus": local_cpus(),
        "per_seed": {str(w): [{k: v for k, v in r.items() if k != "episodes"} for r in rs] for w, rs in runs.items()},
        "summary": {str(w): summarise(rs) for w, rs in runs.items()},
        "same_seed_check": {"seed": seed, "workers_1_identical_to_in_process": same},
    }
    print(f"{'workers':>8}{'val top-1':>18}{'reward':>20}{'test top-1':>18}")
    for w, s in results["summary"].items():
        print(
            f"{w:>8}{s['best_top1_mean']:>11.2%} ±{s['best_top1_sd']:.2%}{s['best_reward_mean']:>13.4f} "
            f"±{s['best_reward_sd']:.4f}{s['best_test_top1_mean']:>11.2%} ±{s['best_test_top1_sd']:.2%}"
        )
    print(f"same seed, 1 Ray worker vs in-process: identical episodes = {same}")
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
