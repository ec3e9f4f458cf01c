"""Strong baselines in the search harness: ``global``, ``sensitivity`` and ``tpe``.

Every baseline acts through the same environment as the DDPG agent: its policy goes through the same
budget wall and is scored by the same pruning, BatchNorm re-estimation and search-val evaluation.

* ``global``: Torch-Pruning's global pruning. Every channel of every group is scored by the env's
  criterion (normalised per group by its mean, as Torch-Pruning does) and one threshold across the whole
  network removes every channel below it; the threshold is bisected to the largest model that meets the
  target. No evaluation is spent choosing the policy.
* ``sensitivity``: Distiller's sensitivity pruning. Each group is pruned alone at ratios from 0.1 to
  ``max_ratio`` and evaluated on search-val; the drops, interpolated, predict the loss of any allocation,
  and a greedy allocation (always the step that saves the most cost per point of predicted loss) prunes
  until the target is met. It spends ``groups x levels`` evaluations.
* ``tpe``: Optuna's TPE sampler over the per-group actions, one trial per episode, told the episode's
  reward: the black-box optimiser a user would try first, with the same evaluation budget as DDPG.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from agents.base import AGENTS, EpisodePlan, SearchAgent
from envs import ChannelPruningEnv

log = logging.getLogger(__name__)
SENSITIVITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def action_for_kept(env: ChannelPruningEnv, name: str, kept: int) -> float:
    """The action that makes the env keep ``kept`` channels of group ``name`` (the middle of its band).

    ``1 - kept / channels`` lies half a channel away from both rounding edges of
    :func:`amc.pruning.kept_channels`, so float32 actions map back to exactly ``kept``.
    """
    channels = env.graph.group(name).channels
    ratio = min(max(1.0 - kept / channels, env.config.min_ratio), env.config.max_ratio)
    return env.ratio_to_action(ratio)


class PolicyAgent(SearchAgent):
    """Plays one per-group policy, decided before the search starts: one episode.

    Args:
        env: The environment.
        kept: Kept channels per group name (a configuration that meets the target).
        evaluations: Evaluations spent deciding the policy (reported as ``agent_evaluations``).
    """

    single_episode = True

    def __init__(self, env: ChannelPruningEnv, kept: Mapping[str, int], evaluations: int = 0) -> None:
        self.kept = dict(kept)
        self.actions = tuple(action_for_kept(env, name, kept[name]) for name in env.group_names)
        self.evaluations = evaluations

    def plan(self, episode: int) -> EpisodePlan:
        return EpisodePlan(episode, "sequence", 0, actions=self.actions)

    def fixed_plan(self, episode: int) -> bool:
        return True

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        return {"evaluations": float(self.evaluations)}


# --------------------------------------------------------------------------- global
def global_kept(env: ChannelPruningEnv) -> dict[str, int]:
    """Kept channels per group from one importance threshold across the network, bisected to the target."""
    from amc.importance import group_importance

    scores = group_importance(env.model, env.graph, env.config.criterion, env._grad_batch)
    options = {name: env.wall.options(name)[0] for name in env.group_names}
    thresholds = np.unique(np.concatenate([s.numpy() for s in scores.values()]))

    def kept_at(threshold: float) -> dict[str, int]:
        kept = {}
        for name, counts in options.items():
            above = int((scores[name] > threshold).sum())
            allowed = [k for k in counts if k <= above]
            kept[name] = allowed[-1] if allowed else counts[0]
        return kept

    lo, hi = 0, len(thresholds) - 1  # the highest threshold keeps every group at its fewest: meets
    while lo < hi:
        mid = (lo + hi) // 2
        if env.wall.meets(kept_at(float(thresholds[mid]))):
            hi = mid
        else:
            lo = mid + 1
    return kept_at(float(thresholds[lo]))


# --------------------------------------------------------------------------- sensitivity
def sensitivity_curves(
    env: ChannelPruningEnv, levels: Sequence[float] = SENSITIVITY_LEVELS
) -> dict[str, list[tuple[float, float]]]:
    """Search-val top-1 drop of each group pruned alone, as (ratio, drop) points from ratio 0."""
    dense = env.evaluate_ratios({})["top1"]
    ratios = sorted({r for r in levels if env.config.min_ratio < r < env.config.max_ratio} | {env.config.max_ratio})
    curves = {}
    for name in env.group_names:
        points, worst = [(0.0, 0.0)], 0.0
        for ratio in ratios:
            worst = max(worst, dense - env.evaluate_ratios({name: ratio})["top1"])  # a drop never shrinks
            points.append((ratio, worst))
        curves[name] = points
    return curves


def _predicted_drop(points: Sequence[tuple[float, float]], ratio: float) -> float:
    xs, ys = zip(*points)
    return float(np.interp(ratio, xs, ys))


def sensitivity_kept(env: ChannelPruningEnv, curves: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, int]:
    """Greedy allocation: repeatedly prunes the group whose next step saves the most cost per predicted loss."""
    options = {name: env.wall.options(name)[0] for name in env.group_names}
    position = {name: len(counts) - 1 for name, counts in options.items()}
    kept = {name: options[name][-1] for name in env.group_names}
    channels = {name: env.graph.group(name).channels for name in env.group_names}
    cost = env.wall.cost.ratio(kept)
    while cost > env.wall.target_ratio:
        best, best_score, best_cost = None, None, cost
        for name in env.group_names:
            if position[name] == 0:
                continue
            fewer = options[name][position[name] - 1]
            trial = {**kept, name: fewer}
            new_cost = env.wall.cost.ratio(trial)
            saved = cost - new_cost
            if saved <= 0:
                continue
            loss = _predicted_drop(curves[name], 1 - fewer / channels[name]) - _predicted_drop(
                curves[name], 1 - kept[name] / channels[name]
            )
            score = max(loss, 0.0) / saved
            if best_score is None or score < best_score or (score == best_score and new_cost < best_cost):
                best, best_score, best_cost = name, score, new_cost
        if best is None:  # nothing left to prune: every group at its fewest (meets, checked by the wall)
            break
        position[best] -= 1
        kept[best] = options[best][position[best]]
        cost = best_cost
    return kept


def _sensitivity_agent(env: ChannelPruningEnv, ddpg_config: object, seed: int) -> PolicyAgent:
    curves = sensitivity_curves(env)
    evaluations = 1 + sum(len(points) - 1 for points in curves.values())
    return PolicyAgent(env, sensitivity_kept(env, curves), evaluations)


# --------------------------------------------------------------------------- tpe
class TPEAgent(SearchAgent):
    """Optuna's TPE sampler over the per-group actions in [-1, 1]; one trial per episode.

    Trials are asked when an episode is planned and told, in episode order, with the episode's reward
    (parallel searches keep several trials in flight: Optuna's constant-liar heuristic covers them).

    Args:
        env: The environment (gives the number of groups).
        seed: Seed of the sampler.
    """

    def __init__(self, env: ChannelPruningEnv, seed: int) -> None:
        self.seed = seed
        self.groups = len(env.group_names)
        self.study = self._new_study(seed)
        self._asked: deque = deque()

    @staticmethod
    def _new_study(seed: int):
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def _ask(self) -> tuple[float, ...]:
        trial = self.study.ask()
        actions = tuple(trial.suggest_float(f"a{i:03d}", -1.0, 1.0) for i in range(self.groups))
        self._asked.append(trial)
        return actions

    def plan(self, episode: int) -> EpisodePlan:
        return EpisodePlan(episode, "sequence", 0, actions=self._ask())

    def adopt(self, plan: EpisodePlan) -> None:
        """Asks again for a trial asked before the checkpoint, now with the plan's actions as its parameters."""
        self.study.enqueue_trial({f"a{i:03d}": a for i, a in enumerate(plan.actions)})
        self._ask()

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        self.study.tell(self._asked.popleft(), float(final_reward))
        return {"trials": float(len(self.study.trials))}

    def save(self, directory: Path) -> None:
        """Writes the finished trials as JSON (params and value); no pickles."""
        directory.mkdir(parents=True, exist_ok=True)
        done = [{"params": t.params, "value": t.value} for t in self.study.trials if t.value is not None]
        (directory / "tpe_trials.json").write_text(json.dumps({"seed": self.seed, "trials": done}))

    def restore(self, directory: Path) -> None:
        """Rebuilds the study from the saved trials; the sampler continues from a seed derived from their count."""
        import optuna

        data = json.loads((directory / "tpe_trials.json").read_text())
        self.study = self._new_study(self.seed + len(data["trials"]))
        dist = optuna.distributions.FloatDistribution(-1.0, 1.0)
        for trial in data["trials"]:
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=trial["params"], distributions=dict.fromkeys(trial["params"], dist), value=trial["value"]
                )
            )
        self._asked.clear()


AGENTS.register("global", lambda env, ddpg_config, seed: PolicyAgent(env, global_kept(env)))
AGENTS.register("sensitivity", _sensitivity_agent)
AGENTS.register("tpe", lambda env, ddpg_config, seed: TPEAgent(env, seed))
