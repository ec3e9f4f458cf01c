"""Latency-targeted against FLOPs-targeted search at the same latency budget, same episode budget, same run.

For each dense seed of a model, two searches of the same agent and episode budget:

* **latency**: ``env.target_metric: latency`` at ``--target`` of the dense model's (estimated) latency;
* **flops**: ``env.target_metric: flops`` at the FLOPs ratio of the uniform policy that meets that latency
  budget, so both searches start from the same uniform policy, and the uniform policy has the same
  measured latency under both budgets.

Then the dense model, both best policies and the uniform one are pruned physically and measured in the same
rounds (median of ``--rounds`` rounds, with the preset's ``env.latency`` settings: batch, threads), and each
best policy's test top-1 (no fine-tuning) is evaluated. The question: at the latency a user pays for, which
budget finds the more accurate model? A FLOPs search may find a policy with fewer FLOPs but more measured
latency (a layer's FLOPs and its time differ), or the other way round: both are reported.

Prints a table and writes JSON (``--out``)::

    .venv/bin/python experiments/bench/latency_vs_flops.py                       # 3 seeds x 300 episodes, ddpg
    .venv/bin/python experiments/bench/latency_vs_flops.py --seeds 1 --episodes 40 --agent random   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agents.search import SearchConfig, resolve_checkpoint, run_search
from amc.engine import build_workspace
from amc.files import write_json_atomic
from amc.latency import cpu_model
from amc.train import TrainConfig, evaluate
from envs import ChannelPruningEnv

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-resnet20-latency50.yaml"
RESULTS = Path(__file__).parent / "results"
ARMS = ("latency", "flops", "uniform")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG, help="a latency-target search preset")
    parser.add_argument("--target", type=float, default=None, help="latency ratio kept (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=3, help="dense models (seeds 0..N-1)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--agent", default="ddpg")
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds (medians)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "amc-bench-baselines")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency_vs_flops.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = SearchConfig.from_yaml(args.config).replace(episodes=args.episodes, agent=args.agent, workers=0)
    if base.env.target_metric != "latency":
        parser.error(f"{args.config} is not a latency-target preset (env.target_metric: {base.env.target_metric})")
    if args.target is not None:
        base = base.replace(env=base.env.replace(target_ratio=args.target))
    started = time.perf_counter()
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            seeds.append(bench_seed(base, seed, Path(tmp) / f"s{seed}", args))
    result = {
        "settings": {
            "config": str(args.config.name),
            "model": base.env.model,
            "latency_target_ratio": base.env.target_ratio,
            "latency": dataclasses.asdict(base.env.latency),
            "agent": args.agent,
            "episodes": args.episodes,
            "seeds": args.seeds,
            "rounds": args.rounds,
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": time.perf_counter() - started,
        },
        "seeds": seeds,
        "mean": {
            arm: {
                key: statistics.fmean(s[arm][key] for s in seeds)
                for key in ("test_top1", "val_top1", "flops_ratio", "latency_ratio_measured", "speedup_measured")
            }
            for arm in ARMS
        },
    }
    _report(result)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


def bench_seed(base: SearchConfig, seed: int, root: Path, args: argparse.Namespace) -> dict:
    config = resolve_checkpoint(
        base.replace(seed=seed, baseline=TrainConfig(**{**vars(base.baseline), "seed": seed})),
        args.cache,
        progress=False,
    )
    ws = build_workspace(config.env.model, config.env.data, config.env.checkpoint)
    env = ChannelPruningEnv.from_workspace(ws, config.env)  # builds (or reads) the latency table
    uniform = env.uniform_ratios()
    uniform_flops = env.evaluate_ratios(uniform)["flops_ratio"]
    flops_env = config.env.replace(target_metric="flops", target_ratio=uniform_flops)
    found = {
        "latency": run_search(config, root / "latency", track=False, progress=False),
        "flops": run_search(config.replace(env=flops_env), root / "flops", track=False, progress=False),
    }
    policies = {"latency": found["latency"].best.ratios, "flops": found["flops"].best.ratios, "uniform": uniform}
    reports, dense = env.latency_reports([policies[arm] for arm in ARMS], rounds=args.rounds)
    row: dict = {
        "seed": seed,
        "dense_test_top1": evaluate(ws.model, ws.data.loader("test", 256)),
        "flops_target_ratio": uniform_flops,
        **dense,
    }
    for arm, report in zip(ARMS, reports):
        val = env.evaluate_ratios(policies[arm], "val")
        test = env.evaluate_ratios(policies[arm], "test")
        row[arm] = {
            "val_top1": val["top1"],
            "test_top1": test["top1"],
            "flops_ratio": val["flops_ratio"],
            **report,
            "latency_ratio_measured": report["latency_ms_measured"] / dense["dense_latency_ms_measured"],
            "speedup_measured": dense["dense_latency_ms_measured"] / report["latency_ms_measured"],
        }
    print(
        f"seed {seed}: "
        + "  ".join(
            f"{arm} test {row[arm]['test_top1']:.2%} FLOPs {row[arm]['flops_ratio']:.1%} "
            f"latency {row[arm]['latency_ratio_measured']:.1%}"
            for arm in ARMS
        ),
        flush=True,
    )
    return row


def _report(result: dict) -> None:
    s = result["settings"]
    print(
        f"\n{s['model']}: latency budget {s['latency_target_ratio']:g} of dense, {s['agent']} x {s['episodes']} "
        f"episodes, mean of {s['seeds']} seeds; test top-1 without fine-tuning; latency measured (median of "
        f"{s['rounds']} rounds)"
    )
    print(f"  {'budget':<10}{'test top-1':>11}{'val top-1':>11}{'FLOPs':>8}{'latency':>9}{'speedup':>9}")
    for arm in ARMS:
        m = result["mean"][arm]
        print(
            f"  {arm:<10}{m['test_top1']:>11.2%}{m['val_top1']:>11.2%}{m['flops_ratio']:>8.1%}"
            f"{m['latency_ratio_measured']:>9.1%}{m['speedup_measured']:>8.2f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
