"""The whole front from one search: one multi-target DDPG search against a TPE study per target and Optuna's
multi-objective sampler, on the same dense models.

For each model and dense seed, with targets T (default 0.2 0.3 0.5 0.7) and ``--episodes`` E evaluations per
target:

- ``tpe_per_target``: ``amc search --agent tpe`` once per target, E episodes each (|T| x E evaluations);
- ``one_search``: one DDPG search with ``env.targets`` = T and ``--one-search-fraction`` x |T| x E episodes
  (default half the evaluations of the per-target studies);
- ``one_search_equal``: the same with |T| x E episodes (equal evaluations);
- ``optuna_multiobjective``: Optuna's multi-objective TPE sampler over the per-group pruning ratios in
  [min_ratio, max_ratio], maximising search-val top-1 and minimising the FLOPs ratio, no budget wall,
  |T| x E trials, each scored by the same pruning, BatchNorm re-estimation and search-val evaluation.

Each method's evaluated policies make one Pareto front (search-val top-1 against FLOPs and params ratios, the
front and hypervolume ``amc pareto`` computes: :func:`amc.service.front.pareto_front`); ``per_target`` is the best
search-val top-1 within each target's budget (None where no evaluated policy meets it). Prints and writes JSON.

    .venv/bin/python experiments/bench/front_quality.py                       # resnet20, 2 dense seeds, E=100
    .venv/bin/python experiments/bench/front_quality.py --episodes 20 --seeds 1 --out /tmp/f.json   # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from agents.search import SearchConfig, resolve_checkpoint, run_search
from amc.files import write_json_atomic
from amc.service.front import Candidate, pareto_front
from amc.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {
    "resnet20": CONFIGS / "digits-resnet20-flops50.yaml",
    "mobilenetv2_small": CONFIGS / "digits-mobilenetv2-flops50.yaml",
}
RESULTS = Path(__file__).parent / "results"
METHODS = ("tpe_per_target", "one_search", "one_search_equal", "optuna_multiobjective")


def dense_config(model: str, seed: int, cache: Path) -> SearchConfig:
    base = SearchConfig.from_yaml(MODELS[model]).replace(workers=0, seed=seed)
    baseline = TrainConfig(**{**vars(base.baseline), "seed": seed})
    return resolve_checkpoint(base.replace(baseline=baseline), cache, progress=False)


def _records(config: SearchConfig) -> list[dict]:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        run_search(config, Path(tmp) / "s", track=False, progress=False)
        return json.loads((Path(tmp) / "s" / "search.json").read_text())["episodes"]


def _optuna_mo(config: SearchConfig, trials: int, seed: int) -> list[dict]:
    import warnings

    import optuna

    from envs import ChannelPruningEnv

    env = ChannelPruningEnv.from_config(config.env.replace(targets=None, target_ratio=1.0))
    low, high = config.env.min_ratio, config.env.max_ratio
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    records = []
    for episode in range(trials):
        trial = study.ask()
        ratios = {name: trial.suggest_float(f"r{i:03d}", low, high) for i, name in enumerate(env.group_names)}
        result = env.evaluate_ratios(ratios, "val")
        study.tell(trial, [result["top1"], result["flops_ratio"]])
        records.append({"episode": episode, "top1": result["top1"], "flops_ratio": result["flops_ratio"],
                        "params_ratio": result["params_ratio"]})  # fmt: skip
    return records


def run_one(job: tuple) -> dict:
    """One method on one dense model: its evaluated policies' front."""
    model, dense, method, targets, episodes, fraction, cache = job
    torch.set_num_threads(1)
    config = dense_config(model, dense, cache)
    total = len(targets) * episodes
    started = time.perf_counter()
    if method == "tpe_per_target":
        records = []
        for target in targets:
            env = config.env.replace(target_ratio=target)
            records += _records(config.replace(agent="tpe", episodes=episodes, env=env))
    elif method.startswith("one_search"):
        count = total if method == "one_search_equal" else max(1, round(fraction * total))
        records = _records(config.replace(agent="ddpg", episodes=count, env=config.env.replace(targets=targets)))
    else:
        records = _optuna_mo(config, total, seed=dense)
    pool = [Candidate("", "", i, r["top1"], r["flops_ratio"], r["params_ratio"]) for i, r in enumerate(records)]
    front = pareto_front(pool)
    per_target = {}
    for target in targets:
        within = [r["top1"] for r in records if r["flops_ratio"] <= target + 1e-12]
        per_target[f"{target:g}"] = max(within) if within else None
    return {
        "model": model,
        "dense_seed": dense,
        "method": method,
        "evaluations": len(records),
        "hypervolume": front.hypervolume,
        "front_size": len(front.front),
        "per_target": per_target,
        "seconds": time.perf_counter() - started,
    }


def summarise(rows: list[dict], targets: list[float]) -> dict:
    models: dict = {}
    for row in rows:
        models.setdefault(row["model"], {}).setdefault(row["method"], []).append(row)
    out: dict = {}
    for model, methods in models.items():
        for method, runs in methods.items():
            entry = {
                "hypervolume": statistics.fmean(r["hypervolume"] for r in runs),
                "hypervolume_per_seed": [r["hypervolume"] for r in runs],
                "evaluations": statistics.fmean(r["evaluations"] for r in runs),
                "seconds": statistics.fmean(r["seconds"] for r in runs),
                "per_target": {},
            }
            for target in targets:
                values = [r["per_target"][f"{target:g}"] for r in runs]
                met = [v for v in values if v is not None]
                entry["per_target"][f"{target:g}"] = statistics.fmean(met) if len(met) == len(values) else None
            out.setdefault(model, {})[method] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20"], choices=list(MODELS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.3, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, default=2, help="dense models per model (seeds 0..N-1)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluations per target of the per-target studies")
    parser.add_argument("--one-search-fraction", type=float, default=0.5, help="one search's share of their total")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one process and thread each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "amc-bench-baselines")
    parser.add_argument("--out", type=Path, default=RESULTS / "front_quality.json")
    args = parser.parse_args()
    for model in args.models:
        for seed in range(args.seeds):
            dense_config(model, seed, args.cache)
    jobs = [
        (model, dense, method, args.targets, args.episodes, args.one_search_fraction, args.cache)
        for model in args.models
        for dense in range(args.seeds)
        for method in args.methods
    ]
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            best = "  ".join(f"{t}: {'-' if v is None else f'{100 * v:.1f}'}" for t, v in row["per_target"].items())
            print(
                f"{row['model']} dense {row['dense_seed']} {row['method']:>22}: hypervolume {row['hypervolume']:.4f} "
                f"({row['evaluations']} evaluations, {row['front_size']} on the front)  best within {best}  "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
    summary = summarise(rows, args.targets)
    for model, methods in summary.items():
        for method, entry in methods.items():
            best = "  ".join(f"{t}: {'-' if v is None else f'{100 * v:.1f}'}" for t, v in entry["per_target"].items())
            print(
                f"{model} {method:>22}: hypervolume {entry['hypervolume']:.4f} ({entry['evaluations']:.0f} evals)  {best}"
            )
    settings = {k: getattr(args, k) for k in ("targets", "seeds", "episodes", "one_search_fraction")}
    write_json_atomic(args.out, {**settings, "models": summary, "runs": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
