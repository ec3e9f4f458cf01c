"""Cost of one search episode against the forward passes it cannot avoid, for several model sizes in one run.

For each model and each episode (random actions, seeded) it times, interleaved:

* ``episode_s``: ``reset`` plus every ``step`` of :class:`envs.ChannelPruningEnv` (action wall, observations,
  pruning by the env's :class:`amc.pruning.ChannelPruner`, BatchNorm re-estimation, search-val evaluation, reward);
* ``eval_forward_s``: the BatchNorm re-estimation batches plus the search-val evaluation run alone on a copy of
  the same pruned model, right after the episode (the floor: a search must run these forward passes);
* ``fresh_episode_s`` / ``fresh_eval_forward_s``: an episode of other actions (so that its widths are new to the
  CPU kernels too) in an env that prunes with :func:`amc.pruning.prune_channels`, a deepcopy of the dense model
  and a new dependency-graph trace per episode (how episodes ran before the cached pruner), and its forward
  passes alone; the cached pruner is then checked to give that episode's top-1 and FLOPs;
* ``masked_episode_s``: the same episode in an env that masks instead: a persistent dense copy has its weights
  restored and the removed channels zeroed (output rows of the convs / linears and the scale and shift of their
  norms, ranked once by L1 on the dense model), then the same forward passes run on the full-size model;
* ``prune_s`` / ``fresh_prune_s``: the cached pruner's ``prune`` / ``prune_channels`` alone on the episode's widths;
* ``steps_before_last_s``: reset plus every step but the last (action wall and observations);
* ``first_forward_s`` / ``second_forward_s``: the same forward passes on a model pruned to never-seen widths, the
  first and the second time (the first builds CPU kernels for the new shapes; an episode pays that,
  ``eval_forward_s`` does not); ``first_forward_extra_s`` is their difference.

Per model: ``ratio`` = episode_s / eval_forward_s, per episode, summarised by its median and interquartile range
(the machine may be shared: the median is the figure), ``ratio_mean`` = mean episode_s / mean eval_forward_s,
and the same for ``fresh_episode_s / fresh_eval_forward_s`` (``fresh_ratio``). The goal is a ratio <= 1.2. A few more episodes then run
under cProfile, with the profiler paused during the forward passes, so that its top entries (by own time) are
what an episode spends besides them; a second profile includes the forward passes.

Usage::

    python experiments/bench/episode_cost.py --episodes 30 --models resnet20 resnet56 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from amc.baseline import cached_baseline
from amc.data import DataConfig
from amc.files import write_json_atomic
from amc.groups import PRUNABLE_TYPES
from amc.pruning import prune_channels, widths_for
from amc.train import TrainConfig
from envs import ChannelPruningEnv, EnvConfig
from envs.channel_pruning import Evaluation, single_threaded

DEFAULT_OUT = Path("experiments/bench/results/episode_cost.json")
FIGURES = (
    "episode_s",
    "eval_forward_s",
    "fresh_episode_s",
    "fresh_eval_forward_s",
    "masked_episode_s",
    "prune_s",
    "fresh_prune_s",
    "steps_before_last_s",
    "first_forward_s",
    "second_forward_s",
)


class ChannelMasks:
    """A persistent dense copy whose removed channels are zeroed instead of cut out.

    Args:
        env: The environment whose dense model and groups are used.
    """

    def __init__(self, env: ChannelPruningEnv) -> None:
        self.model = copy.deepcopy(env.model).eval()
        self._dense_state = {k: v.detach().clone() for k, v in env.model.state_dict().items()}
        self._targets: dict[str, list[nn.Module]] = {}
        self._order: dict[str, torch.Tensor] = {}
        names = {id(m): n for n, m in self.model.named_modules()}
        dg = tp.DependencyGraph().build_dependency(self.model, env.graph.example_inputs, verbose=False)
        classifier = self.model.get_submodule(env.graph.classifier)
        importance = tp.importance.GroupMagnitudeImportance(p=1)
        for group in dg.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_TYPES):
            outs = [
                dep.target.module
                for dep, _ in group.items
                if dep.handler.__name__ == "prune_out_channels" and id(dep.target.module) in names
            ]
            name = next((names[id(m)] for m in outs if names[id(m)] in env.group_names), None)
            if name is not None:
                self._targets[name] = outs
                self._order[name] = torch.argsort(importance(group))  # least important first

    @torch.no_grad()
    def apply(self, widths: Mapping[str, int]) -> nn.Module:
        """Restores the dense weights and zeroes, per group, all but the ``widths[name]`` most important channels."""
        self.model.load_state_dict(self._dense_state)
        for name, targets in self._targets.items():
            removed = self._order[name][: len(self._order[name]) - widths[name]]
            for module in targets:  # convs / linears: output rows; norms: scale and shift, so the output is 0
                for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if param is not None:
                        param[removed] = 0.0
        return self.model


class MaskingEnv(ChannelPruningEnv):
    """The same environment, evaluating each episode on a masked persistent copy instead of a pruned one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.masks = ChannelMasks(self)

    def _evaluate_widths(self, widths: Mapping[str, int], split: str, role: str) -> Evaluation:
        model = self.masks.apply(widths)
        return Evaluation(model, self.outcome(widths, self.score_model(model, split)))


class FreshPruneEnv(ChannelPruningEnv):
    """The same environment, pruning a deepcopy of the dense model, traced anew, every episode."""

    def _evaluate_widths(self, widths: Mapping[str, int], split: str, role: str) -> Evaluation:
        with single_threaded():
            pruned = prune_channels(self.model, self.graph, widths, self.config.criterion, self._grad_batch).model
        return Evaluation(pruned, self.outcome(widths, self.score_model(pruned, split)))


class Clocks:
    """Wall-clock and CPU (this process) seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed(fn: Callable[[], object]) -> tuple[tuple[float, float], object]:
    """(wall seconds, CPU seconds) of ``fn()``, and its result."""
    clocks = Clocks()
    out = fn()
    return clocks.elapsed(), out


def play(env: ChannelPruningEnv, actions: np.ndarray, seed: int) -> tuple[dict, tuple[float, float]]:
    """Plays one episode; returns the last info and the (wall, CPU) seconds spent before the last step."""
    clocks = Clocks()
    env.reset(seed=seed)
    for action in actions[:-1]:
        env.step(action)
    before_last = clocks.elapsed()
    return env.step(actions[-1])[4], before_last


def measure_episode(
    envs: Mapping[str, ChannelPruningEnv], actions: tuple[np.ndarray, np.ndarray], fresh: dict[str, float], seed: int
) -> dict[str, float]:
    """Times one episode every way and its parts.

    The cached env plays ``actions[0]``, the fresh-prune env ``actions[1]`` (each then meets widths it has not
    run before, as a search does: the same widths twice would find the CPU kernels of the first run built);
    ``fresh`` is a never-seen policy for the first-run timing.
    """
    env = envs["cached"]
    episode_s, (info, steps_s) = timed(lambda: play(env, actions[0], seed))
    alone = copy.deepcopy(env.last_model)
    forward_s, _ = timed(lambda: env.score_model(alone))
    fresh_s, (fresh_info, _) = timed(lambda: play(envs["fresh"], actions[1], seed))
    fresh_alone = copy.deepcopy(envs["fresh"].last_model)
    fresh_forward_s, _ = timed(lambda: env.score_model(fresh_alone))
    masked_s, (masked_info, _) = timed(lambda: play(envs["masked"], actions[0], seed))
    widths = widths_for(env.graph, info["ratios"], env.config.round_to)
    pruner = env._pruner("episode")
    with single_threaded():  # as the env runs them
        prune_s, _ = timed(lambda: pruner.prune(widths))
        fresh_prune_s, _ = timed(lambda: prune_channels(env.model, env.graph, widths, env.config.criterion))
    new_model = prune_channels(env.model, env.graph, widths_for(env.graph, fresh), env.config.criterion).model
    first_s, _ = timed(lambda: env.score_model(new_model))
    second_s, _ = timed(lambda: env.score_model(new_model))
    cached = env.evaluate_ratios(fresh_info["ratios"])  # untimed: the cached pruner, the fresh episode's widths
    if cached["top1"] != fresh_info["top1"] or cached["flops"] != fresh_info["flops"]:
        raise RuntimeError(f"the cached and the fresh pruning disagree: {cached} vs {fresh_info}")
    times = (
        episode_s,
        forward_s,
        fresh_s,
        fresh_forward_s,
        masked_s,
        prune_s,
        fresh_prune_s,
        steps_s,
        first_s,
        second_s,
    )
    return {
        **{key: t[0] for key, t in zip(FIGURES, times, strict=True)},
        **{f"{key[:-2]}_cpu_s": t[1] for key, t in zip(FIGURES, times, strict=True)},
        "top1": info["top1"],
        "top1_masked": masked_info["top1"],
        "flops_ratio": info["flops_ratio"],
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and interquartile range."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def summarise(rows: list[dict[str, float]], clock: str) -> dict[str, object]:
    """The ratios the benchmark is about (per episode: median and spread) and the medians of the parts,
    on the ``wall`` or the ``cpu`` clock."""
    suffix = "_s" if clock == "wall" else "_cpu_s"
    col = {key: [r[f"{key[:-2]}{suffix}"] for r in rows] for key in FIGURES}
    ratio = spread([e / f for e, f in zip(col["episode_s"], col["eval_forward_s"], strict=True)])
    fresh = spread([e / f for e, f in zip(col["fresh_episode_s"], col["fresh_eval_forward_s"], strict=True)])
    median = {key: statistics.median(values) for key, values in col.items()}
    return {
        "ratio": ratio["median"],
        "ratio_spread": ratio,
        "ratio_mean": statistics.fmean(col["episode_s"]) / statistics.fmean(col["eval_forward_s"]),
        "fresh_ratio": fresh["median"],
        "fresh_ratio_spread": fresh,
        "fresh_ratio_mean": statistics.fmean(col["fresh_episode_s"]) / statistics.fmean(col["fresh_eval_forward_s"]),
        "medians": median,
        "overhead_s": statistics.median(e - f for e, f in zip(col["episode_s"], col["eval_forward_s"], strict=True)),
        "first_forward_extra_s": statistics.median(
            a - b for a, b in zip(col["first_forward_s"], col["second_forward_s"], strict=True)
        ),
        "episode_speedup": statistics.median(col["fresh_episode_s"]) / statistics.median(col["episode_s"]),
        "masking_over_physical": statistics.median(
            m / e for m, e in zip(col["masked_episode_s"], col["episode_s"], strict=True)
        ),
    }


def profile_episodes(
    env: ChannelPruningEnv, draw: Callable[[], np.ndarray], episodes: int, seed: int, top: int = 5
) -> dict[str, list[dict]]:
    """cProfile's top entries by own time over ``episodes`` episodes: without and with the forward passes."""
    out = {}
    score = env.score_model
    for key, pause_forward in (("outside_forward", True), ("whole_episode", False)):
        profiler = cProfile.Profile()

        def paused(model: nn.Module, split: str = "val", profiler: cProfile.Profile = profiler) -> float:
            profiler.disable()
            try:
                return score(model, split)
            finally:
                profiler.enable()

        if pause_forward:
            env.score_model = paused  # type: ignore[method-assign]
        try:
            for i in range(episodes):
                actions = draw()
                profiler.enable()
                play(env, actions, seed + i)
                profiler.disable()
        finally:
            env.__dict__.pop("score_model", None)
        out[key] = top_entries(pstats.Stats(profiler), episodes, top)
    return out


def top_entries(stats: pstats.Stats, episodes: int, top: int) -> list[dict]:
    """The ``top`` functions by own time, per episode."""
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [
        {
            "function": pstats.func_std_string(func),
            "calls_per_episode": calls / episodes,
            "own_ms_per_episode": 1000 * own / episodes,
            "cumulative_ms_per_episode": 1000 * cumulative / episodes,
        }
        for func, (_, calls, own, cumulative, _) in rows
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20, help="timed episodes per model (after one warm-up episode)")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], help="registered model names")
    p.add_argument("--profile-episodes", type=int, default=5, help="profiled episodes per model (0: no profile)")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs target ratio")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="baseline cache (default: $AMC_CACHE_DIR, else ~/.cache/amc)"
    )
    p.add_argument("--epochs", type=int, default=15, help="epochs of the cached baselines")
    p.add_argument("--eval-batch-size", type=int, default=EnvConfig.eval_batch_size, help="images per evaluation batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--actions",
        choices=("random", "greedy"),
        default="random",
        help="random: uniform in [-1, 1]; greedy: -1 plus small noise, so the wall stops each episode "
        "at the target (the policies a trained agent ends up near)",
    )
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="clock of the headline ratios: cpu (this process's CPU time: the work done, robust on a shared "
        "machine; use with --threads 1) or wall; both are recorded",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random actions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return p.parse_args(argv)


def build_envs(args: argparse.Namespace, model: str) -> dict[str, ChannelPruningEnv]:
    data = DataConfig("digits")
    checkpoint = str(cached_baseline(model, data, TrainConfig(epochs=args.epochs), args.cache_dir, progress=False))
    config = EnvConfig(
        model=model, data=data, checkpoint=checkpoint, target_ratio=args.target, eval_batch_size=args.eval_batch_size
    )
    return {
        "cached": ChannelPruningEnv.from_config(config),
        "fresh": FreshPruneEnv.from_config(config),
        "masked": MaskingEnv.from_config(config),
    }


def measure_model(args: argparse.Namespace, model: str) -> dict:
    """All figures of one model."""
    envs = build_envs(args, model)
    env = envs["cached"]
    rng = np.random.default_rng(args.seed)
    n = len(env.group_names)
    high = 1.0 if args.actions == "random" else -0.9
    draw = lambda: rng.uniform(-1.0, high, (n, 1)).astype(np.float32)  # noqa: E731
    fresh = lambda: {g: float(r) for g, r in zip(env.group_names, rng.uniform(0.0, 0.8, n))}  # noqa: E731
    measure_episode(envs, (draw(), draw()), fresh(), args.seed)  # warm-up
    rows = [measure_episode(envs, (draw(), draw()), fresh(), args.seed + i) for i in range(args.episodes)]
    profile = profile_episodes(env, draw, args.profile_episodes, args.seed) if args.profile_episodes else {}
    return {
        "groups": n,
        "dense_flops": env.dense_cost.flops,
        "dense_params": env.dense_cost.params,
        "top1_mean": statistics.fmean(r["top1"] for r in rows),
        "top1_masked_mean": statistics.fmean(r["top1_masked"] for r in rows),
        "flops_ratio_mean": statistics.fmean(r["flops_ratio"] for r in rows),
        "cpu": summarise(rows, "cpu"),
        "wall": summarise(rows, "wall"),
        "profile_top5": profile,
        "episodes_raw": rows,
    }


def report(model: str, result: dict, clock: str) -> None:
    for name in (clock, *({"cpu", "wall"} - {clock})):
        r = result[name]
        s, f, m = r["ratio_spread"], r["fresh_ratio_spread"], r["medians"]
        print(
            f"{model} ({name} clock): ratio {s['median']:.3f} (IQR {s['q1']:.3f}-{s['q3']:.3f}, of means "
            f"{r['ratio_mean']:.3f}); with a fresh prune per episode {f['median']:.3f} (IQR {f['q1']:.3f}-"
            f"{f['q3']:.3f}); medians: eval forward {1000 * m['eval_forward_s']:.1f} ms, overhead "
            f"{1000 * r['overhead_s']:.1f} ms, prune {1000 * m['prune_s']:.1f} ms (fresh {1000 * m['fresh_prune_s']:.1f}"
            f" ms), steps before the last {1000 * m['steps_before_last_s']:.1f} ms, first-forward extra "
            f"{1000 * r['first_forward_extra_s']:.1f} ms"
        )
    for key, entries in result["profile_top5"].items():
        print(f"  profile top 5 by own time, {key.replace('_', ' ')}:")
        for e in entries:
            print(
                f"    {e['own_ms_per_episode']:7.2f} ms own {e['cumulative_ms_per_episode']:8.2f} ms cum "
                f"{e['calls_per_episode']:8.1f} calls  {e['function']}"
            )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {model: measure_model(args, model) for model in args.models}
    result = {
        "benchmark": "episode_cost",
        "data": "digits",
        "target_flops": args.target,
        "actions": args.actions,
        "episodes": args.episodes,
        "profile_episodes": args.profile_episodes,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "bn_batches": EnvConfig.bn_batches,
        "bn_batch_size": EnvConfig.bn_batch_size,
        "eval_batch_size": args.eval_batch_size,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "ratios": {model: r[args.clock]["ratio"] for model, r in models.items()},
        "ratio_iqr": {model: [r[args.clock]["ratio_spread"][q] for q in ("q1", "q3")] for model, r in models.items()},
        "fresh_ratios": {model: r[args.clock]["fresh_ratio"] for model, r in models.items()},
        "flops_vs_first": {
            model: r["dense_flops"] / models[args.models[0]]["dense_flops"] for model, r in models.items()
        },
        "models": models,
    }
    for model, r in models.items():
        report(model, r, args.clock)
    keys = ("ratios", "ratio_iqr", "fresh_ratios", "flops_vs_first", "threads", "clock")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
