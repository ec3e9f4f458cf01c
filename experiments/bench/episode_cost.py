"""Cost of one search episode against the forward passes it cannot avoid, and masking vs physical removal.

For each episode (random actions, seeded) it times, in the same run:

* ``episode``: ``reset`` plus every ``step`` of :class:`envs.ChannelPruningEnv` (action wall, observations,
  physical pruning, BatchNorm re-estimation, search-val evaluation, reward);
* ``eval_forward``: the BatchNorm re-estimation batches plus the search-val evaluation run alone on the
  same pruned model (the floor: a search must run these forward passes);
* ``physical``: pruning the dense model physically (``amc.pruning.prune_channels``) plus those forward
  passes on the smaller model: the part of an episode that masking would replace;
* ``masking``: the alternative, on a persistent dense copy: restore its weights, zero the removed
  channels (output rows of the convs / linears and the BatchNorm scale and shift of every group, ranked
  once by L1 on the dense model) and run the same forward passes on the full-size model.

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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from amc.baseline import cached_baseline
from amc.data import DataConfig
from amc.groups import PRUNABLE_TYPES
from amc.policy import write_json_atomic
from amc.pruning import prune_channels, widths_for
from amc.train import TrainConfig
from envs import ChannelPruningEnv, EnvConfig

DEFAULT_OUT = Path("experiments/bench/results/episode_cost.json")


class MaskedModel:
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
        graph_names = set(env.group_names)
        dg = tp.DependencyGraph().build_dependency(self.model, env.graph.example_inputs, verbose=False)
        classifier = self.model.get_submodule(env.graph.classifier)
        importance = tp.importance.GroupMagnitudeImportance(p=1)
        for group in dg.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_TYPES):
            outs = [
                dep.target.module for dep, _ in group.items
                if dep.handler.__name__ == "prune_out_channels" and id(dep.target.module) in names
            ]
            name = next((names[id(m)] for m in outs if names[id(m)] in graph_names), None)
            if name is None:
                continue
            self._targets[name] = outs
            self._order[name] = torch.argsort(importance(group))  # least important first

    @torch.no_grad()
    def apply(self, widths: dict[str, int]) -> nn.Module:
        """Restores the dense weights and zeroes, per group, all but the ``widths[name]`` most important channels."""
        self.model.load_state_dict(self._dense_state)
        for name, targets in self._targets.items():
            removed = self._order[name][: len(self._order[name]) - widths[name]]
            for module in targets:  # convs / linears: output rows; norms: gamma and beta, so the output is 0
                for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if param is not None:
                        param[removed] = 0.0
        return self.model


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def play(env: ChannelPruningEnv, actions: np.ndarray, seed: int) -> dict:
    env.reset(seed=seed)
    info: dict = {}
    for action in actions:
        info = env.step(action)[4]
    return info


def measure_episode(env: ChannelPruningEnv, masked: MaskedModel, actions: np.ndarray, seed: int) -> dict[str, float]:
    """Times one episode and its parts; returns the timings (seconds) and accuracies."""
    episode_s, info = timed(lambda: play(env, actions, seed))
    widths = widths_for(env.graph, info["ratios"], env.config.round_to)
    alone = copy.deepcopy(env.last_model)
    forward_s, top1_forward = timed(lambda: env.score_model(alone))
    prune_s, pruned = timed(lambda: prune_channels(env.model, env.graph, widths, env.config.criterion).model)
    pruned_forward_s, _ = timed(lambda: env.score_model(pruned))
    mask_s, masked_model = timed(lambda: masked.apply(widths))
    mask_forward_s, top1_masked = timed(lambda: env.score_model(masked_model))
    return {
        "episode_s": episode_s, "eval_forward_s": forward_s, "physical_s": prune_s + pruned_forward_s,
        "prune_s": prune_s, "masking_s": mask_s + mask_forward_s, "mask_apply_s": mask_s,
        "mask_forward_s": mask_forward_s, "top1": info["top1"], "top1_forward_alone": top1_forward,
        "top1_masked": top1_masked, "flops_ratio": info["flops_ratio"],
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of every figure, and the ratios the benchmark is about."""
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    return {
        **mean,
        "ratio": mean["episode_s"] / mean["eval_forward_s"],
        "ratio_median": statistics.median(r["episode_s"] / r["eval_forward_s"] for r in rows),
        "masking_over_physical": mean["masking_s"] / mean["physical_s"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20, help="timed episodes (after one warm-up episode)")
    p.add_argument("--model", default="resnet20", help="registered model name")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs target ratio")
    p.add_argument("--checkpoint", default=None, help="dense checkpoint (default: train / reuse a cached baseline)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/baselines"), help="baseline cache directory")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the cached baseline")
    p.add_argument("--eval-batch-size", type=int, default=EnvConfig.eval_batch_size, help="images per evaluation batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random actions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = DataConfig("digits")
    checkpoint = args.checkpoint or str(
        cached_baseline(args.model, data, TrainConfig(epochs=args.epochs), args.cache_dir, progress=False)
    )
    env = ChannelPruningEnv.from_config(EnvConfig(model=args.model, data=data, checkpoint=checkpoint, target_ratio=args.target,
                                                 eval_batch_size=args.eval_batch_size))
    masked = MaskedModel(env)
    rng = np.random.default_rng(args.seed)
    draw = lambda: rng.uniform(-1, 1, (len(env.group_names), 1)).astype(np.float32)  # noqa: E731
    measure_episode(env, masked, draw(), args.seed)  # warm-up
    rows = [measure_episode(env, masked, draw(), args.seed + i) for i in range(args.episodes)]
    result = {
        "benchmark": "episode_cost", "model": args.model, "data": "digits", "target_flops": args.target,
        "episodes": args.episodes, "threads": torch.get_num_threads(), "groups": len(env.group_names),
        "bn_batches": env.config.bn_batches, "bn_batch_size": env.config.bn_batch_size,
        "eval_batch_size": env.config.eval_batch_size,
        "machine": platform.machine(), "torch": torch.__version__, **summarise(rows),
    }
    print(json.dumps(result, indent=2))
    write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
