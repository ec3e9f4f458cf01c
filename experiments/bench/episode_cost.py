"""Cost of one search episode against the forward passes it cannot avoid, and masking vs physical removal.

For each episode (random actions, seeded) it times, in the same run:

* ``episode_s``: ``reset`` plus every ``step`` of :class:`envs.ChannelPruningEnv` (action wall, observations,
  physical pruning, BatchNorm re-estimation, search-val evaluation, reward);
* ``eval_forward_s``: the BatchNorm re-estimation batches plus the search-val evaluation run alone on the
  same pruned model, right after the episode (the floor: a search must run these forward passes);
* ``masked_episode_s``: the same episode (same actions) in an env that masks instead: a persistent dense
  copy has its weights restored and the removed channels zeroed (output rows of the convs / linears and
  the scale and shift of their norms, ranked once by L1 on the dense model), then the same forward
  passes run on the full-size model;
* ``prune_s``: ``amc.pruning.prune_channels`` alone (deepcopy, dependency graph, channel removal);
* ``steps_before_last_s``: reset plus every step but the last (action wall and observations);
* ``first_forward_s``: the forward passes on a freshly pruned model of new widths, the first time (CPU
  kernels for new shapes are built then; the episode pays this, ``eval_forward_s`` does not).

``ratio = episode_s / eval_forward_s`` (means over the episodes); the goal is <= 1.3.

Usage::

    python experiments/bench/episode_cost.py --episodes 20 --model resnet20
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
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
from envs import ChannelPruningEnv, EnvConfig, Outcome
from envs.channel_pruning import Evaluation, single_threaded

DEFAULT_OUT = Path("experiments/bench/results/episode_cost.json")


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
        accuracy = self.score_model(model, split)
        cost, dense = self.graph.estimate(widths), self.graph.dense_cost
        outcome = Outcome(
            accuracy,
            cost.flops,
            cost.params,
            cost.flops / dense.flops,
            cost.params / dense.params,
            self.cost_model.ratio(widths),
            self.target.ratio,
        )
        return Evaluation(model, outcome)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def play(env: ChannelPruningEnv, actions: np.ndarray, seed: int) -> tuple[dict, float]:
    """Plays one episode; returns the last info and the seconds spent before the last step."""
    start = time.perf_counter()
    env.reset(seed=seed)
    for action in actions[:-1]:
        env.step(action)
    before_last = time.perf_counter() - start
    return env.step(actions[-1])[4], before_last


def measure_episode(
    env: ChannelPruningEnv, masking: MaskingEnv, actions: np.ndarray, fresh: dict[str, float], seed: int
) -> dict[str, float]:
    """Times one episode both ways and its parts; ``fresh`` is a never-seen policy for the first-run timing."""
    episode_s, (info, steps_s) = timed(lambda: play(env, actions, seed))
    alone = copy.deepcopy(env.last_model)
    forward_s, _ = timed(lambda: env.score_model(alone))
    masked_s, (masked_info, _) = timed(lambda: play(masking, actions, seed))
    widths = widths_for(env.graph, info["ratios"], env.config.round_to)
    with single_threaded():  # as the env runs it
        prune_s, _ = timed(lambda: prune_channels(env.model, env.graph, widths, env.config.criterion))
    new_model = prune_channels(env.model, env.graph, widths_for(env.graph, fresh), env.config.criterion).model
    first_s, _ = timed(lambda: env.score_model(new_model))
    return {
        "episode_s": episode_s,
        "eval_forward_s": forward_s,
        "masked_episode_s": masked_s,
        "prune_s": prune_s,
        "steps_before_last_s": steps_s,
        "first_forward_s": first_s,
        "top1": info["top1"],
        "top1_masked": masked_info["top1"],
        "flops_ratio": info["flops_ratio"],
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of every figure, and the ratios the benchmark is about."""
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    return {
        **mean,
        "ratio": mean["episode_s"] / mean["eval_forward_s"],
        "ratio_median": statistics.median(r["episode_s"] / r["eval_forward_s"] for r in rows),
        "masking_over_physical": mean["masked_episode_s"] / mean["episode_s"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20, help="timed episodes (after one warm-up episode)")
    p.add_argument("--model", default="resnet20", help="registered model name")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs target ratio")
    p.add_argument("--checkpoint", default=None, help="dense checkpoint (default: train / reuse a cached baseline)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="baseline cache (default: $AMC_CACHE_DIR, else ~/.cache/amc)"
    )
    p.add_argument("--epochs", type=int, default=15, help="epochs of the cached baseline")
    p.add_argument("--eval-batch-size", type=int, default=EnvConfig.eval_batch_size, help="images per evaluation batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--actions",
        choices=("random", "greedy"),
        default="random",
        help="random: uniform in [-1, 1]; greedy: -1 plus small noise, so the wall stops each episode "
        "at the target (the policies a trained agent ends up near)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random actions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return p.parse_args(argv)


def build_envs(args: argparse.Namespace) -> tuple[ChannelPruningEnv, MaskingEnv]:
    data = DataConfig("digits")
    checkpoint = args.checkpoint or str(
        cached_baseline(args.model, data, TrainConfig(epochs=args.epochs), args.cache_dir, progress=False)
    )
    config = EnvConfig(
        model=args.model,
        data=data,
        checkpoint=checkpoint,
        target_ratio=args.target,
        eval_batch_size=args.eval_batch_size,
    )
    return ChannelPruningEnv.from_config(config), MaskingEnv.from_config(config)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env, masking = build_envs(args)
    rng = np.random.default_rng(args.seed)
    n = len(env.group_names)
    high = 1.0 if args.actions == "random" else -0.9
    draw = lambda: rng.uniform(-1.0, high, (n, 1)).astype(np.float32)  # noqa: E731
    fresh = lambda: {g: float(r) for g, r in zip(env.group_names, rng.uniform(0.0, 0.8, n))}  # noqa: E731
    measure_episode(env, masking, draw(), fresh(), args.seed)  # warm-up
    rows = [measure_episode(env, masking, draw(), fresh(), args.seed + i) for i in range(args.episodes)]
    result = {
        "benchmark": "episode_cost",
        "model": args.model,
        "data": "digits",
        "target_flops": args.target,
        "actions": args.actions,
        "episodes": args.episodes,
        "threads": torch.get_num_threads(),
        "groups": n,
        "bn_batches": env.config.bn_batches,
        "bn_batch_size": env.config.bn_batch_size,
        "eval_batch_size": env.config.eval_batch_size,
        "machine": platform.machine(),
        "torch": torch.__version__,
        **summarise(rows),
    }
    print(json.dumps(result, indent=2))
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
