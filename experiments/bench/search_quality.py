"""The project's search-quality table: DDPG against the baselines a user would otherwise run.

For each model, dense baselines are trained with ``--seeds`` seeds (the seed of the dense model moves
results by +-10 points, so every figure is a mean over dense models); each dense model is searched once per
method and FLOPs target with the same episode budget, through the same harness (``amc search``'s code: the
budget wall, pruning, BatchNorm re-estimation, search-val evaluation). Each method's best policy (by
search-val) is evaluated on the test split without fine-tuning, and also with AMC's least-squares channel
reconstruction; DDPG's and uniform's best policies also after a short fine-tune (best epoch by search-val).
A second table compares the importance criteria (the uniform and the global policy under each criterion).

Prints the tables, writes JSON (``--out``, merged per model so several invocations can fill one file) and one
plot per model and target of best-so-far search-val top-1 against episode (mean over seeds) for every method.

    .venv/bin/python experiments/bench/search_quality.py                          # full: ~1 h per model on 2 cores
    .venv/bin/python experiments/bench/search_quality.py --models resnet20 --seeds 1 --episodes 60   # a quick look
    .venv/bin/python experiments/bench/search_quality.py --reconstruct --targets 0.2 --criteria  # searches with reconstruction
    .venv/bin/python experiments/bench/search_quality.py --selection-size 200 --methods tpe ddpg --criteria
    .venv/bin/python experiments/bench/search_quality.py --data mnist1d   # 1-D ResNet-20s on MNIST-1D at 5% / 10% FLOPs

With ``--selection-size N``, N training images are held out as the selection split (the dense models train on N
fewer) and every search returns the best of its top policies re-ranked there (``selection_top_k``); each run also
records the test top-1 of the policy that was best on search-val, so the search-val to test gap is measured
before and after selection on the same searches (``selection.by_reward`` and ``selection.by_selection``).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agents.ddpg import AMC_STYLE
from agents.search import SearchConfig, resolve_checkpoint, run_search
from amc.engine import FinetuneSchedule, build_workspace, prune_and_finetune
from amc.errors import ConfigError
from amc.policy import load_policy
from amc.train import TrainConfig, evaluate
from envs import ChannelPruningEnv

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {
    "resnet20": CONFIGS / "digits-resnet20-flops50.yaml",
    "mobilenetv2_small": CONFIGS / "digits-mobilenetv2-flops50.yaml",
}
DATA_MODELS = {
    "digits": MODELS,
    "mnist1d": {
        "resnet20_1d": CONFIGS / "mnist1d-resnet20_1d-flops10.yaml",
        "resnet20_1d_wide": CONFIGS / "mnist1d-resnet20_1d_wide-flops05.yaml",
    },
}
"""The models of each data set (``--data``) and their preset configs."""
DATA_TARGETS = {"digits": [0.2, 0.5], "mnist1d": [0.05, 0.1]}
"""Default FLOPs targets per data set: budgets where the methods differ (MNIST-1D's models saturate at 20%)."""
METHODS = (
    "uniform",
    "global",
    "sensitivity",
    "random",
    "tpe",
    "ddpg",
    "ddpg_amc",
    "ddpg_p32",
    "ddpg_u1",
    "ddpg_u2",
    "ddpg_h64",
    "ddpg_h128",
)
SINGLE_EPISODE = ("uniform", "global", "sensitivity")
# DDPG as AMC configures it (the defaults before critic-ranked proposals): warm-up of 50 uniform episodes, one
# critic, the actor's noisy action played as is, AMC's observation (no history). A reference for what the
# proposals and the history change. Each variant: (DDPG fields, env fields).
DDPG_VARIANTS = {
    "ddpg_amc": ({**AMC_STYLE, "warmup_episodes": 50, "noise_sigma": 0.5}, {"observe_history": False}),
    "ddpg_p32": ({"proposals": 32}, {}),  # the default agent with 32 proposals (the default before the history)
    # the default agent with 1 or 2 gradient steps per episode instead of one per transition (a learner that keeps up
    # with many workers: experiments/bench/ray_scaling.py --learner-only)
    "ddpg_u1": ({"updates_per_episode": 1}, {}),
    "ddpg_u2": ({"updates_per_episode": 2}, {}),
    # the default agent with smaller networks (a learner cheap enough for many workers on one CPU thread)
    "ddpg_h64": ({"hidden": (64, 64)}, {}),
    "ddpg_h128": ({"hidden": (128, 128)}, {}),
}
VAL_AT = (30, 100, 300)
CRITERIA = ("l1", "l2", "bn_scale", "taylor", "apoz")
RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=list(DATA_MODELS), default="digits", help="data set (default: digits)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=[m for models in DATA_MODELS.values() for m in models],
        help="models of --data (default: all of them)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="dense models per model (seeds 0..N-1)")
    parser.add_argument(
        "--search-seeds", type=int, default=2, help="searches per dense model and searching method (random, tpe, ddpg)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="searches run side by side, one process and thread each")
    parser.add_argument("--episodes", type=int, default=300, help="episode budget of random, tpe and ddpg")
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=None,
        help="FLOPs ratios kept (default: digits 0.2 0.5, mnist1d 0.05 0.1)",
    )
    parser.add_argument(
        "--methods", nargs="*", default=list(METHODS), choices=METHODS, help="none: the criterion table only"
    )
    parser.add_argument(
        "--criteria",
        nargs="*",
        default=list(CRITERIA),
        choices=CRITERIA,
        help="criteria for the criterion table (none: skip it)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "amc-bench-baselines")
    parser.add_argument(
        "--reconstruct",
        action="store_true",
        help="search with AMC's channel reconstruction on (env.reconstruct), every episode",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the methods (and criteria) run now in the model's entry of --out, keeping the others' "
        "cells (the entry must have the same episodes, seeds, search seeds and selection size; checked before "
        "anything runs); a model without an entry gets one",
    )
    parser.add_argument(
        "--selection-size",
        type=int,
        default=0,
        help="hold out this many training images as the selection split (searches re-rank their best there)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file (default: results/search_quality.json, or _reconstruct / _selection beside it)",
    )
    args = parser.parse_args()
    args.models = args.models or list(DATA_MODELS[args.data])
    args.targets = args.targets or DATA_TARGETS[args.data]
    other = [m for m in args.models if m not in DATA_MODELS[args.data]]
    if other:
        parser.error(
            f"--models {' '.join(other)}: not models of --data {args.data} ({', '.join(DATA_MODELS[args.data])})"
        )
    if args.out is None:
        suffix = "_reconstruct" if args.reconstruct else "_selection" if args.selection_size else ""
        data = "" if args.data == "digits" else f"_{args.data}"
        args.out = RESULTS / f"search_quality{data}{suffix}.json"
    if args.update and args.out.is_file():  # refuse before an hour of searches, not after
        entries = json.loads(args.out.read_text()).get("models", {})
        wanted = {"episodes": args.episodes, "seeds": args.seeds, "search_seeds": args.search_seeds, "data": args.data}
        for model in args.models:
            differ = [k for k, v in wanted.items() if model in entries and entries[model].get(k) != v]
            if differ:
                parser.error(f"--update: {model}'s entry in {args.out} was run with other {', '.join(differ)}")
    torch.set_num_threads(1)  # small models: one thread per process is fastest and keeps runs comparable
    for model in args.models:
        started = time.perf_counter()
        table = bench_model(model, args)
        table["seconds"] = time.perf_counter() - started
        _report(model, table, args)
        merged = _merge(args.out, model, table, args)
        _plot(model, merged, args)
    print(f"wrote {args.out}")
    return 0


def bench_model(model: str, args: argparse.Namespace) -> dict:
    base = SearchConfig.from_yaml(DATA_MODELS[args.data][model]).replace(
        episodes=args.episodes, workers=0
    )  # in-process: comparable
    if args.reconstruct:
        base = base.replace(env=base.env.replace(reconstruct=True))
    if args.selection_size:
        data = dataclasses.replace(base.env.data, selection_size=args.selection_size)
        base = base.replace(env=base.env.replace(data=data))
    table: dict = {
        "dense_test_top1_per_seed": [],
        "criterion": base.env.criterion,
        "reconstruct": base.env.reconstruct,
        "selection_size": base.env.data.selection_size,  # the preset's (MNIST-1D: 2,000) unless --selection-size
    }
    seeded = [  # dense baselines trained (or read from the cache) here, before the jobs start
        resolve_checkpoint(
            base.replace(seed=seed, baseline=TrainConfig(**{**vars(base.baseline), "seed": seed})),
            args.cache,
            progress=False,
        )
        for seed in range(args.seeds)
    ]
    for config in seeded:
        ws = build_workspace(model, config.env.data, config.env.checkpoint)
        table["dense_test_top1_per_seed"].append(evaluate(ws.model, ws.data.loader("test", 256)))
    jobs = [
        (config, seed, target, method, search_seed)
        for seed, config in enumerate(seeded)
        for target in args.targets
        for method in args.methods
        for search_seed in range(1 if method in SINGLE_EPISODE else args.search_seeds)
    ]
    criteria_jobs = [
        (config, seed, target, c)
        for seed, config in enumerate(seeded)
        for target in args.targets
        for c in args.criteria
    ]
    curves: dict = {}
    with _pool(args.jobs) as pool:
        rows = pool.map(_search_job, [(model, *job, args) for job in jobs])
        crit_rows = pool.map(_criterion_job, [(*job, args) for job in criteria_jobs])
        for (_, seed, target, method, search_seed), row in zip(jobs, rows):
            key = f"flops_{target:g}"
            cell = table.setdefault(key, {}).setdefault(method, {})
            for name, value in row.items():
                if name != "curve":
                    cell.setdefault(name, []).append(value)
            curves.setdefault(key, {}).setdefault(method, []).append(row["curve"])
            print(
                f"{model} seed {seed}/{search_seed} {key:>9} {method:>11}: val {row['val_top1']:.2%}  "
                f"test {row['test_top1']:.2%}  recon {row['recon_test_top1']:.2%}  ({row['seconds']:.0f} s, "
                f"{row['evaluations']} evals)",
                flush=True,
            )
        for (_, _seed, target, criterion), crit in zip(criteria_jobs, crit_rows):
            cell = table.setdefault("criteria", {}).setdefault(f"flops_{target:g}", {}).setdefault(criterion, {})
            if "refused" in crit:
                cell["refused"] = crit["refused"]
                continue
            for name, value in crit.items():
                cell.setdefault(name, []).append(value)
    table["dense_test_top1"] = statistics.fmean(table["dense_test_top1_per_seed"])
    _summarise(table, curves)
    return table


class _InProcess:
    """The pool interface (``map``) in this process: ``--jobs 1``."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items):
        return [fn(item) for item in items]


def _pool(jobs: int):
    """``jobs`` worker processes (each searches with one torch thread), or this process for 1."""
    if jobs <= 1:
        return _InProcess()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _search_job(job: tuple) -> dict:
    model, config, seed, target, method, search_seed, args = job
    config = config.replace(env=config.env.replace(target_ratio=target))
    if method in DDPG_VARIANTS:
        ddpg, env = DDPG_VARIANTS[method]
        config = config.replace(
            agent="ddpg", ddpg=dataclasses.replace(config.ddpg, **ddpg), env=config.env.replace(**env)
        )
    else:
        config = config.replace(agent=method)
    if search_seed:  # search seed 0 keeps the dense seed as the search's seed (the table's earlier runs)
        config = config.replace(seed=seed + 1000 * search_seed)
    ws = build_workspace(model, config.env.data, config.env.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        return _search(config, Path(tmp) / "search", ws, args)


def _criterion_job(job: tuple) -> dict:
    config, _seed, target, criterion, args = job
    config = config.replace(env=config.env.replace(target_ratio=target))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return _criterion_row(config, criterion, Path(tmp), args)
        except ConfigError as e:  # e.g. apoz on a model whose groups reach no ReLU: a row, not the run's end
            return {"refused": str(e).splitlines()[0]}


def _search(config: SearchConfig, out: Path, ws, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    result = run_search(config, out, track=False, progress=False)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "search.json").read_text())
    episodes = summary["episodes"]
    curve = list(np.maximum.accumulate([e["top1"] for e in episodes]))
    recon = ChannelPruningEnv.from_workspace(ws, config.env.replace(reconstruct=True))
    row = {
        "val_top1": result.best.top1,
        "test_top1": result.best_test_top1,
        "recon_test_top1": recon.evaluate_ratios(result.best.ratios, "test")["top1"],
        "flops_ratio": result.best.flops_ratio,
        "seconds": seconds,
        "curve": curve,
        "evaluations": _evaluations(config.agent, len(episodes), len(ws.graph)),
        "episodes_to_99pct": int(np.argmax(np.array(curve) >= 0.99 * curve[-1])) + 1,
    }
    selection = summary["selection"]
    if selection is not None:  # the policy best on search-val alone, for the gap before selection
        by_reward = next(e for e in episodes if e["episode"] == selection["best_reward_episode"])
        row["selection_top1"] = summary["best"]["selection_top1"]
        row["by_reward_val_top1"] = by_reward["top1"]
        row["by_reward_test_top1"] = _test_top1(ws, config, by_reward["ratios"])
    if config.agent in ("ddpg", "uniform") and args.finetune_epochs:
        _, acc = prune_and_finetune(
            ws, load_policy(out / "best_policy.json"), FinetuneSchedule(epochs=args.finetune_epochs), progress=False
        )
        row["finetuned_test_top1"] = acc["top1"]
    return row


def _test_top1(ws, config: SearchConfig, ratios: dict[str, float]) -> float:
    """Test top-1 of ``ratios`` through the search's own env (no reconstruction unless the search had it)."""
    return ChannelPruningEnv.from_workspace(ws, config.env, progress=False).evaluate_ratios(ratios, "test")["top1"]


def _evaluations(agent: str, episodes: int, groups: int) -> int:
    """Search-val evaluations a method spent (sensitivity evaluates each group alone before its episode)."""
    if agent == "sensitivity":
        return 1 + groups * 9 + 1
    return episodes


def _criterion_row(config: SearchConfig, criterion: str, out: Path, args: argparse.Namespace) -> dict:
    """Test top-1 of the uniform and the global policy when ``criterion`` picks the channels."""
    env_config = config.env.replace(criterion=criterion)
    row = {}
    for method in ("uniform", "global"):
        result = run_search(config.replace(agent=method, env=env_config), out / method, track=False, progress=False)
        row[f"{method}_test_top1"] = result.best_test_top1
    return row


def _summarise(table: dict, curves: dict) -> None:
    for key, methods in curves.items():
        for method, per_seed in methods.items():
            cell = table[key][method]
            for name in list(cell):
                if name.endswith("top1") or name in ("episodes_to_99pct", "seconds", "evaluations"):
                    cell[f"{name}_mean"] = statistics.fmean(cell[name])
            cell["episodes_to_99pct_per_seed"] = cell.pop("episodes_to_99pct")
            cell["episodes_to_99pct"] = cell.pop("episodes_to_99pct_mean")
            length = min(len(c) for c in per_seed)
            cell["best_so_far_val_mean"] = list(np.mean([c[:length] for c in per_seed], axis=0))
            cell["val_at"], cell["val_at_sd"] = _val_at(per_seed)
            gaps = [v - t for v, t in zip(cell["val_top1"], cell["test_top1"])]
            cell["selection"] = {
                "val": cell["val_top1_mean"],
                "test": cell["test_top1_mean"],
                "gap": statistics.fmean(gaps),
            }
            if "selection_top1" in cell:  # before (best on search-val) and after (best on the selection split)
                before = [v - t for v, t in zip(cell["by_reward_val_top1"], cell["by_reward_test_top1"])]
                cell["selection"]["by_reward"] = {
                    "val": cell["by_reward_val_top1_mean"],
                    "test": cell["by_reward_test_top1_mean"],
                    "gap": statistics.fmean(before),
                }
                cell["selection"]["by_selection"] = {
                    "val": cell["val_top1_mean"],
                    "selection": cell["selection_top1_mean"],
                    "test": cell["test_top1_mean"],
                    "gap": statistics.fmean(gaps),
                }
    for crits in table.get("criteria", {}).values():
        for cell in crits.values():
            for name in [n for n in cell if n != "refused"]:
                cell[f"{name}_mean"] = statistics.fmean(cell[name])


def _val_at(curves: list[list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation over runs of the best-so-far search-val top-1 after 30 / 100 / 300 episodes.

    A method that stops earlier (a one-episode baseline) keeps its last value.
    """
    means, sds = {}, {}
    for n in VAL_AT:
        values = [c[min(n, len(c)) - 1] for c in curves]
        means[str(n)] = statistics.fmean(values)
        sds[str(n)] = statistics.stdev(values) if len(values) > 1 else 0.0
    return means, sds


def _report(model: str, table: dict, args: argparse.Namespace) -> None:
    print(
        f"\n{model}: dense test top-1 {table['dense_test_top1']:.2%} (mean of {args.seeds} seeds), "
        f"criterion {table['criterion']}, {args.episodes} episodes, test top-1 without fine-tuning (mean of seeds)"
    )
    for target in args.targets:
        key = f"flops_{target:g}"
        print(f"  {key}:")
        for method in args.methods:
            c = table[key][method]
            ft = f"  fine-tuned {c['finetuned_test_top1_mean']:.2%}" if "finetuned_test_top1_mean" in c else ""
            at = "  ".join(f"@{n} {c['val_at'][str(n)]:.1%}+-{c['val_at_sd'][str(n)]:.1%}" for n in VAL_AT)
            print(
                f"    {method:>11}  test {c['test_top1_mean']:.2%}  recon {c['recon_test_top1_mean']:.2%}"
                f"  val {c['val_top1_mean']:.2%}  best-so-far val {at}  to-99% {c['episodes_to_99pct']:.0f} ep{ft}"
            )
        for criterion, c in table.get("criteria", {}).get(key, {}).items():
            if "refused" in c:
                print(f"    criterion {criterion:>8}: refused ({c['refused']})")
                continue
            print(
                f"    criterion {criterion:>8}: uniform {c['uniform_test_top1_mean']:.2%}  "
                f"global {c['global_test_top1_mean']:.2%}"
            )


def _merge(path: Path, model: str, table: dict, args: argparse.Namespace) -> dict:
    """Adds this model's table to the JSON file (other models' entries kept), under a file lock; returns the entry.

    With ``--update`` the model's existing entry keeps the cells of the methods (and criteria) not run now.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "episodes": args.episodes,
        "seeds": args.seeds,
        "search_seeds": args.search_seeds,
        "data": args.data,
        "selection_size": table["selection_size"],
    }
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}
        if "models" not in data:
            data = {"models": {}}
        entry = {**table, **settings}
        if args.update:
            entry = _updated(data["models"].get(model), table, settings, path, model)
        data["models"][model] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
    return entry


def _updated(old: dict | None, table: dict, settings: dict, path: Path, model: str) -> dict:
    """``old`` with this run's method cells (and criteria) written over it; refuses other settings."""
    if old is None:  # nothing to keep: the model's first entry
        return {**table, **settings}
    differ = [k for k, v in settings.items() if old.get(k, 0 if k == "selection_size" else None) != v]
    if differ or old.get("reconstruct") != table["reconstruct"]:
        raise SystemExit(f"--update: {model}'s entry in {path} was run with other settings ({differ}); run all methods")
    merged = dict(old)
    for key, cells in table.items():
        if key.startswith("flops_"):
            merged[key] = {**old.get(key, {}), **cells}
        elif key == "criteria":  # one level deeper: per target, the criteria run now replace only theirs
            merged[key] = {t: {**old.get(key, {}).get(t, {}), **c} for t, c in {**old.get(key, {}), **cells}.items()}
    updated = sorted({m for k, c in table.items() if k.startswith("flops_") for m in c})
    if updated:
        merged["updated_methods"] = updated
    if table.get("criteria"):
        merged["updated_criteria"] = sorted({c for cells in table["criteria"].values() for c in cells})
    return merged


def _plot(model: str, table: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.targets), figsize=(6 * len(args.targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], args.targets):
        key = f"flops_{target:g}"
        for method in [m for m in METHODS if m in table[key]]:
            curve = table[key][method]["best_so_far_val_mean"]
            xs = np.arange(1, len(curve) + 1)
            if len(curve) == 1:  # one-episode methods: a flat line at their value
                xs, curve = [1, args.episodes], [curve[0], curve[0]]
            ax.plot(xs, np.array(curve) * 100, label=method, lw=1.5, ls="--" if len(xs) == 2 else "-")
        runs = f"{args.seeds} dense x {args.search_seeds} search seeds"
        ax.set_title(f"{model}, FLOPs <= {target:g}: best so far (mean of {runs})", fontsize=10)
        ax.set_xlabel("episode (policies evaluated)")
        ax.set_ylabel("best search-val top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.parent / f"{args.out.stem}_{model}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
