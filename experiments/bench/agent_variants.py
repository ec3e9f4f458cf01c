"""DDPG settings side by side: how fast each finds good policies, and how well its critics predict.

For each model, FLOPs target, dense seed and search seed, every variant searches the same dense model in-process
(``amc search``'s code) for ``--episodes`` episodes. Per run it records the best-so-far search-val top-1 curve
and two diagnostics of the learner: the correlation between the critics' prediction for the proposal they
chose (``predicted_reward``) and the reward the episode then got, and the fraction of learning episodes that
beat the warm-up's best. Prints one line per run and a summary (mean over runs), writes JSON.

A variant is ``NAME`` (a registered agent, its config's settings) or ``NAME=AGENT:JSON`` (JSON: DDPG fields
that replace the config's; a key ``env.FIELD`` replaces an env field instead). The search seed of a run is ``1000 x search seed + dense seed``.

    .venv/bin/python experiments/bench/agent_variants.py --targets 0.2 --episodes 100 \\
        --variants tpe ddpg 'c1=ddpg:{"critics": 1, "optimism": 0}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from agents.search import SearchConfig, resolve_checkpoint, run_search
from amc.files import write_json_atomic
from amc.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {
    "resnet20": CONFIGS / "digits-resnet20-flops50.yaml",
    "mobilenetv2_small": CONFIGS / "digits-mobilenetv2-flops50.yaml",
}
RESULTS = Path(__file__).parent / "results"
AT = (30, 100, 300)


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``NAME`` or ``NAME=AGENT:JSON`` -> (name, agent, DDPG overrides)."""
    if "=" not in text:
        return text, text, {}
    name, spec = text.split("=", 1)
    agent, _, overrides = spec.partition(":")
    try:
        fields = json.loads(overrides) if overrides else {}
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name}: {overrides!r} is not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: the overrides must be a JSON object of DDPG fields")
    return name, agent, fields


def dense_config(model: str, seed: int, episodes: int, cache: Path) -> SearchConfig:
    base = SearchConfig.from_yaml(MODELS[model]).replace(episodes=episodes, workers=0)
    baseline = TrainConfig(**{**vars(base.baseline), "seed": seed})
    return resolve_checkpoint(base.replace(seed=seed, baseline=baseline), cache, progress=False)


def run_one(job: tuple) -> dict:
    """One search; returns its curve and the learner's diagnostics."""
    model, target, dense, search_seed, (name, agent, fields), episodes, cache = job
    torch.set_num_threads(1)
    config = dense_config(model, dense, episodes, cache)
    config = config.replace(seed=1000 * search_seed + dense, agent=agent, env=config.env.replace(target_ratio=target))
    env_fields = {k.removeprefix("env."): v for k, v in fields.items() if k.startswith("env.")}
    ddpg_fields = {k: v for k, v in fields.items() if not k.startswith("env.")}
    config = config.replace(ddpg=dataclasses.replace(config.ddpg, **ddpg_fields), env=config.env.replace(**env_fields))
    stats: dict[int, dict] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_search(
            config, Path(tmp) / "s", track=False, progress=False, on_episode=lambda r, s: stats.update({r.episode: s})
        )
        episodes_ = json.loads((Path(tmp) / "s" / "search.json").read_text())["episodes"]
    rewards = np.array([e["reward"] for e in episodes_])
    row = {
        "model": model,
        "target": target,
        "dense_seed": dense,
        "search_seed": search_seed,
        "variant": name,
        "seconds": time.perf_counter() - started,
        "curve": np.maximum.accumulate([e["top1"] for e in episodes_]).tolist(),
    }
    chosen = sorted(e for e, s in stats.items() if "predicted_reward" in s)
    if len(chosen) > 2:
        predicted = np.array([stats[e]["predicted_reward"] for e in chosen])
        row["critic_fit"] = float(np.corrcoef(predicted, rewards[chosen])[0, 1])
    warmup = config.ddpg.warmup_episodes if agent == "ddpg" else 0
    if 0 < warmup < len(rewards):
        row["beats_warmup_best"] = float(np.mean(rewards[warmup:] > rewards[:warmup].max()))
    return row


def summarise(rows: list[dict]) -> dict:
    cells: dict = {}
    for row in rows:
        cells.setdefault(f"{row['model']} flops_{row['target']:g}", {}).setdefault(row["variant"], []).append(row)
    summary: dict = {}
    for cell, variants in cells.items():
        for name, runs in variants.items():
            entry = {
                "runs": len(runs),
                "val_at": {
                    str(n): statistics.fmean(r["curve"][min(n, len(r["curve"])) - 1] for r in runs)
                    for n in AT
                    if n <= len(runs[0]["curve"])
                },
            }
            for key in ("critic_fit", "beats_warmup_best", "seconds"):
                values = [r[key] for r in runs if key in r and np.isfinite(r[key])]
                if values:
                    entry[key] = statistics.fmean(values)
            summary.setdefault(cell, {})[name] = entry
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--seeds", type=int, default=3, help="dense models per model (seeds 0..N-1)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0], help="search seeds of every variant")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument(
        "--variants", type=parse_variant, nargs="+", default=[parse_variant(v) for v in ("tpe", "ddpg")]
    )
    parser.add_argument("--jobs", type=int, default=2, help="searches side by side, one process and thread each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "amc-bench-baselines")
    parser.add_argument("--out", type=Path, default=RESULTS / "agent_variants.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the dense baselines train as search_quality.py trains them: the same cached models
    for model in args.models:  # dense baselines trained here once, before the jobs start
        for seed in range(args.seeds):
            dense_config(model, seed, args.episodes, args.cache)
    jobs = [
        (model, target, dense, search_seed, variant, args.episodes, args.cache)
        for search_seed in args.search_seeds
        for dense in range(args.seeds)
        for model in args.models
        for target in args.targets
        for variant in args.variants
    ]
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            c = row["curve"]
            fit = f"  critic fit {row['critic_fit']:+.2f}" if "critic_fit" in row else ""
            print(
                f"{row['model']} {row['target']:g} dense {row['dense_seed']} search {row['search_seed']} "
                f"{row['variant']:>12}: best val {c[min(29, len(c) - 1)]:.1%} @30  {c[min(99, len(c) - 1)]:.1%} @100  "
                f"{c[-1]:.1%} @{len(c)}{fit}  ({row['seconds']:.0f} s)",
                flush=True,
            )
    summary = summarise(rows)
    for cell, variants in summary.items():
        for name, entry in variants.items():
            at = "  ".join(f"@{n} {100 * v:.1f}" for n, v in entry["val_at"].items())
            extra = "".join(f"  {k} {entry[k]:.2f}" for k in ("critic_fit", "beats_warmup_best") if k in entry)
            print(f"{cell:>26} {name:>12} ({entry['runs']} runs): {at}{extra}")
    write_json_atomic(args.out, {"episodes": args.episodes, "summary": summary, "runs": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
