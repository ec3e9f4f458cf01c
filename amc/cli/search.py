"""``amc search`` and ``amc sweep``: the RL search of ``agents/``, imported inside the commands that run it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

from amc.cli.commands import command
from amc.cli.options import add_address, add_device, add_tracking_uri, seed_int, workers
from amc.errors import ConfigError

AGENT_NAMES = ("ddpg", "random", "uniform", "global", "sensitivity", "tpe")
"""The agents ``--agent`` offers (kept literal so ``--help`` imports no torch; a test compares it with AGENTS)."""


def _add_store_args(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri``, ``--artifact-root`` and ``--cache-dir``: where a search writes besides its own directory."""
    add_tracking_uri(p)
    p.add_argument(
        "--artifact-root",
        metavar="DIR_OR_URI",
        help="local stores: where a newly created MLflow experiment keeps its run artifacts, in a directory "
        "named after it (default: $AMC_ARTIFACT_ROOT, else mlartifacts/ next to the sqlite:/// "
        "database); an http:// server keeps its own artifact handling",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="cache of trained dense baselines (default: $AMC_CACHE_DIR, else $XDG_CACHE_HOME/amc, else ~/.cache/amc)",
    )


@command(
    "search", "search per-group pruning ratios with DDPG (or a baseline: random, uniform, global, sensitivity, tpe)"
)
def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help="experiment YAML (e.g. experiments/configs/digits-resnet20-flops50.yaml)"
    )
    p.add_argument(
        "--agent",
        choices=AGENT_NAMES,
        help="override the config's agent: ddpg, or a baseline in the same harness (random, uniform, "
        "global, sensitivity, tpe; see docs/guides/agents.md)",
    )
    p.add_argument("--episodes", type=int, help="override the config's episodes: the search's budget, warm-up included")
    p.add_argument("--seed", type=seed_int, help="override the config's seed (the agent's)")
    p.add_argument(
        "--target-ratio",
        "--target",
        dest="target_ratio",
        type=float,
        metavar="R",
        help="override the search's budget (env.target_ratio): the pruned model may keep at most the fraction R "
        "of the dense cost of env.target_metric (flops, params or latency), in (0, 1]; every episode meets it",
    )
    p.add_argument(
        "--target-ms",
        type=float,
        metavar="MS",
        help="budget milliseconds per forward pass on this machine instead (env.target_ms; sets "
        "env.target_metric to latency): measured as env.latency says, below the dense model's latency",
    )
    p.add_argument(
        "--rebuild-latency",
        action="store_true",
        help="measure the latency table again instead of reading it from the cache (env.latency.rebuild); a "
        "cached table is also measured again when whole models measured now disagree with it",
    )
    p.add_argument(
        "--targets",
        type=float,
        nargs="+",
        metavar="R",
        help="search several budgets at once (env.targets), e.g. --targets 0.2 0.3 0.5 0.7: every episode gets one, "
        "the agent sees it, and the search writes a best policy per target (best_policy_t<R>.json) and the Pareto "
        "front of every episode (ddpg or random; a range is --set 'env.targets={low: 0.2, high: 0.7}')",
    )
    _add_set_arg(p, "any field of the config")
    p.add_argument(
        "--workers",
        type=workers,
        metavar="auto|N",
        help="override the config's workers, the rollout workers: 0 = in-process without Ray, N = N Ray actors "
        "(1 gives exactly the in-process episodes), auto = one Ray actor per local CPU (the default)",
    )
    add_address(p)
    add_device(
        p,
        "torch device: cpu only (a search prunes and evaluates on the CPU; its config has no device setting); "
        "fine-tune the found policy on a GPU with `amc prune --device cuda`",
    )
    _add_store_args(p)
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--out",
        type=Path,
        help="search directory (default: runs/<model>-<data>-<target>-<agent>-s<seed>, what is searched)",
    )
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted search in DIR")
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="DIR",
        help="warm start: begin with the agent of the ddpg search in DIR (its networks, its episodes relabelled to "
        "this budget in the replay, its best policies played first, no warm-up); for another target, a retrained "
        "dense model of the same architecture, or another width (init_from)",
    )


@_search_args.run
def _search(args: argparse.Namespace) -> int:
    if args.device != "cpu":
        raise ConfigError(
            f"--device {args.device}: a search runs on the CPU (its rollouts prune and evaluate there; the search "
            "config has no device setting); drop --device, and fine-tune the found policy on the GPU with "
            "amc prune --device cuda"
        )
    from agents.records import default_out_dir
    from agents.search import SearchConfig, run_search, stored_config

    if args.resume is not None:
        if args.config is not None or args.set:
            raise ConfigError(
                "--resume continues with the search's own config; drop --config and --set "
                "(only --episodes and --workers may change)"
            )
        if args.init_from is not None:
            raise ConfigError(
                "--resume continues a search, which keeps the agent it has; --init-from starts a new one: drop one"
            )
        stored = stored_config(args.resume) if (args.resume / "config.yaml").is_file() else None
        config = stored.replace(episodes=args.episodes) if stored is not None and args.episodes else stored
        if stored is not None and args.workers is not None:
            config = config.replace(workers=args.workers)
        result = run_search(
            config,
            args.resume,
            resume=True,
            tracking_uri=args.tracking_uri,
            track=not args.no_tracking,
            address=args.address,
            cache_dir=args.cache_dir,
            artifact_root=args.artifact_root,
        )
    else:
        if args.config is None:
            raise ConfigError("pass --config FILE.yaml (see experiments/configs/) or --resume DIR")
        config = _with_overrides(SearchConfig.from_yaml(args.config, args.set), args)
        if args.address and config.workers == 0:
            raise ConfigError(
                f"--address {args.address} joins a Ray cluster, but workers 0 runs the search in-process; "
                "pass --workers N (or auto) to run the episodes on the cluster, or drop --address"
            )
        out = args.out or default_out_dir(config)
        result = run_search(
            config,
            out,
            tracking_uri=args.tracking_uri,
            track=not args.no_tracking,
            address=args.address,
            cache_dir=args.cache_dir,
            artifact_root=args.artifact_root,
        )
    _print_summary(result)
    return 0


def _add_set_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what}, by dotted key; repeatable "
        "(e.g. --set env.target_ratio=0.3 --set ddpg.noise_sigma=0.3 --set env.reconstruct=true)",
    )


def _with_overrides(config, args: argparse.Namespace):
    changes = {k: getattr(args, k) for k in ("agent", "episodes", "seed", "workers") if getattr(args, k) is not None}
    if args.init_from is not None:
        changes["init_from"] = str(args.init_from.resolve())
    env = {}
    if args.target_ratio is not None:
        env["target_ratio"] = args.target_ratio
    if args.target_ms is not None:
        env.update(target_metric="latency", target_ms=args.target_ms)
    if args.targets is not None:
        env["targets"] = tuple(args.targets)
    if getattr(args, "rebuild_latency", False):
        env["latency"] = dataclasses.replace(config.env.latency, rebuild=True)
    if env:
        changes["env"] = config.env.replace(**env)
    return config.replace(**changes) if changes else config


def _print_summary(result) -> None:
    b, u = result.best, result.uniform
    print(f"\nsearch finished after {result.episodes} episodes -> {result.out}")
    print(f"{'':<10}{'val top-1':>10}{'test top-1':>12}{'FLOPs':>8}{'params':>8}")
    print(f"{'uniform':<10}{u['top1']:>10.2%}{u['test_top1']:>12.2%}{u['flops_ratio']:>8.1%}{u['params_ratio']:>8.1%}")
    print(f"{'best':<10}{b.top1:>10.2%}{result.best_test_top1:>12.2%}{b.flops_ratio:>8.1%}{b.params_ratio:>8.1%}")
    summary = json.loads((result.out / "search.json").read_text())
    selection = summary.get("selection")
    if selection:
        print(
            f"selection: the best of the top {selection['top_k']} policies by search-val, re-evaluated on "
            f"{selection['split_size']} held-out images: {summary['best']['selection_top1']:.2%} "
            f"(episode {selection['chosen_episode']}; the best on search-val alone was episode "
            f"{selection['best_reward_episode']})"
        )
    warm = summary.get("warm_start")
    if warm:
        print(
            f"warm start from {warm['from']} ({warm['source_episodes']} episodes): {warm['replay_episodes']} relabelled "
            f"into the replay ({'same' if warm['same_evaluation'] else 'another'} dense model and search-val data), "
            f"its {warm['seed_episodes']} best policies played first"
        )
    for entry in summary.get("targets", []):
        if entry["episode"] is None:
            print(f"target {entry['target']:<5g} no episode met it (turn uniform_first on, or search longer)")
            continue
        print(
            f"target {entry['target']:<5g} best {entry['top1']:.2%} val, {entry['test_top1']:.2%} test "
            f"(uniform {entry['uniform']['top1']:.2%} / {entry['uniform']['test_top1']:.2%}; episode "
            f"{entry['episode']}, {entry['candidates']} episodes within budget) -> {result.out / entry['file']}"
        )
    if "front" in summary:
        front = summary["front"]
        print(
            f"Pareto front of every episode: {len(front['policies'])} policies, hypervolume "
            f"{front['hypervolume']:.4f} (search.json: front)"
        )
    if "latency_ms_measured" in summary["best"]:
        best, front = summary["best"], summary.get("pareto", [])
        print(
            f"latency (ms per forward pass): best {best['latency_ms_estimated']:.3f} estimated, "
            f"{best['latency_ms_measured']:.3f} measured; dense {summary['dense_latency_ms_measured']:.3f} measured; "
            f"{len(front)} Pareto policies measured (search.json: pareto)"
        )
    _print_where(result)


def _print_where(result) -> None:
    """Where the best policy and the MLflow run went (absolute: the same from any directory), and the next commands."""
    from agents.search import stored_config
    from amc.service.tracking import absolute_uri

    policy = (result.out / "best_policy.json").resolve()
    dense = shlex.quote(result.checkpoint) if result.checkpoint else "<dense model.pt>"
    print(f"best policy: {policy}")
    print(f"apply with: amc prune --checkpoint {dense} --policy {shlex.quote(str(policy))} --out <dir>")
    if result.run_id:
        uri = absolute_uri(result.tracking_uri) if result.tracking_uri else None
        name = f"{result.run_name} (run id {result.run_id})" if result.run_name else result.run_id
        print(f"MLflow run: {name} in the store {uri}")
        experiment = stored_config(result.out).experiment
        print(f"browse it: amc ui --tracking-uri {shlex.quote(str(uri))} --experiment {shlex.quote(experiment)}")


@command("sweep", "run a grid of searches on Ray Tune (targets x seeds x rewards x agents)")
def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, required=True, help="sweep YAML (e.g. experiments/sweeps/digits-resnet20-grid.yaml)"
    )
    _add_store_args(p)
    add_address(p)
    p.add_argument("--out", type=Path, help="sweep directory (default: runs/sweeps/<name>)")
    _add_set_arg(p, "any field of the base search config, before the sweep's own overrides and grid")


@_sweep_args.run
def _sweep(args: argparse.Namespace) -> int:
    from agents.sweep import load_sweep, run_sweep

    sweep, base = load_sweep(args.config, args.set)
    out = args.out or Path("runs") / "sweeps" / sweep.name
    if (out / "trials").exists():
        raise ConfigError(f"{out} already holds a sweep; choose another --out")
    results = run_sweep(
        sweep, base, out, args.tracking_uri, args.address, cache_dir=args.cache_dir, artifact_root=args.artifact_root
    )
    keys = list(sweep.grid)
    print(f"\n{len(results)} trials -> {out}")
    print("  ".join(f"{k:>16}" for k in keys) + f"{'val top-1':>11}{'test top-1':>12}{'FLOPs':>8}")
    for r in sorted(results, key=lambda r: [str(r[k]) for k in keys]):
        print(
            "  ".join(f"{r[k]!s:>16}" for k in keys)
            + f"{r['best_top1']:>11.2%}{r['best_test_top1']:>12.2%}{r['best_flops_ratio']:>8.1%}"
        )
    return 0
