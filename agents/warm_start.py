"""Warm start (``init_from``): a DDPG search that begins with another search's agent.

A search started from another one (``amc search --init-from DIR``, ``SearchConfig.init_from``) takes over,
from the other search's latest checkpoint:

- **the networks**: actor, critics, their target networks, both optimizers' state, and the reward baseline the
  critics predict relative to (:meth:`agents.ddpg.AMCDDPG.take_over`);
- **the replay, relabelled** (:func:`relabel`): every episode the other search recorded is walked through this
  search's env at this search's target (its observations, its budget wall; :meth:`envs.ChannelPruningEnv.walk`).
  An episode enters the replay when the wall lets its policy through unchanged and both searches measure alike
  (the same :meth:`envs.ChannelPruningEnv.fingerprint`: dense weights, calibration and search-val data, pruning
  and evaluation settings): its measured top-1 holds, and its reward is recomputed at the new target. The others
  are left out: the new wall would change their policy (a tighter target), or their top-1 is another dense
  model's (a retrained model, another width);
- **the other search's best policies** (:func:`seed_plans`): after the uniform episode, this search plays the
  other's ``init_episodes`` best distinct policies fitted to its budget (every group's action moved by the one
  shift that meets the new target, :meth:`envs.ChannelPruningEnv.fit_ratios`), measured again.

There is no warm-up: from its first episode the agent plans with its actor and critics, and learns. Exploration
starts again at this search's ``ddpg.noise_sigma``.

The other search must be a DDPG search whose agent observes as many features (the same groups, both with or
without ``env.observe_history``, both with one target or several) with networks of the same shape
(``ddpg.hidden``, ``ddpg.critics``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import DDPGAgent, EpisodePlan, plan_target
from agents.checkpoints import read_checkpoint, stored_config
from agents.records import EpisodeRecord
from agents.selection import top_distinct
from amc.errors import ConfigError
from envs.targets import contains

__all__ = ["Relabelled", "Source", "load_source", "relabel", "seed_plans", "warm_start"]


@dataclass(frozen=True)
class Source:
    """The search a warm start begins from.

    Attributes:
        out: Its search directory.
        agent_dir: Its latest checkpoint's saved agent.
        episode: Episodes in that checkpoint.
        records: Their records.
        fingerprint: Its env's evaluation fingerprint (None: written before fingerprints were kept).
    """

    out: Path
    agent_dir: Path
    episode: int
    records: list[EpisodeRecord]
    fingerprint: str | None


def load_source(path: str | Path) -> Source:
    """Reads the latest checkpoint of the search in ``path``.

    Raises:
        ConfigError: When ``path`` holds no search, a search of another agent, or no checkpoint yet.
    """
    out = Path(path)
    if not (out / "config.yaml").is_file():
        raise ConfigError(
            f"init_from {out}: no search there (no config.yaml); pass the directory of a ddpg search "
            "(what amc search --out wrote)"
        )
    agent = stored_config(out).agent
    if agent != "ddpg":
        raise ConfigError(
            f"init_from {out}: that is a {agent} search; a warm start takes a ddpg search's agent "
            "(actor, critics, replay)"
        )
    found = read_checkpoint(out)
    if found is None:
        raise ConfigError(
            f"init_from {out}: the search has no checkpoint yet (one is written every checkpoint_every episodes); "
            "let it run longer or lower its checkpoint_every"
        )
    where, state, _ = found
    return Source(out, where / "agent", state.episode, state.records, state.fingerprint)


@dataclass(frozen=True)
class Relabelled:
    """One of the other search's episodes, as an episode of this one.

    Attributes:
        episode: Its episode in the other search.
        observations: This env's observations of its policy, ``(groups + 1, features)``.
        actions: The actions the wall applied (its own, unchanged), ``(groups,)``.
        reward: Its reward at this search's target.
    """

    episode: int
    observations: np.ndarray
    actions: np.ndarray
    reward: float


def _by_target(env: Any, records: list[EpisodeRecord]) -> dict[float | None, list[EpisodeRecord]]:
    """The records this env can take, grouped by the target each is relabelled to (None: the env's one target)."""
    targets = env.config.targets
    if targets is None:
        return {None: list(records)}
    grouped: dict[float | None, list[EpisodeRecord]] = defaultdict(list)
    for record in records:
        if record.target is not None and contains(targets, record.target):
            grouped[record.target].append(record)
    return dict(grouped)


def relabel(env: Any, records: list[EpisodeRecord]) -> list[Relabelled]:
    """The episodes of ``records`` (measured by an env of the same fingerprint) that ``env``'s wall lets through.

    Each is walked through ``env`` at its target here (``env``'s target; with several, its own when ``env`` has
    it, else it is left out); kept when every applied action is the one it asks for, with the reward of its
    measured top-1 and exact costs at that target. In the other search's episode order.
    """
    names = env.group_names
    kept: list[Relabelled] = []
    for target, group in _by_target(env, records).items():
        missing = [n for n in names if n not in group[0].ratios]
        if missing:
            raise ConfigError(
                f"the other search's policies have no ratio for {', '.join(missing[:3])}: it searched another model"
            )
        asked = np.array([[env.ratio_to_action(r.ratios[n]) for n in names] for r in group], dtype=np.float64)
        observations, applied = env.walk(lambda i, _obs, asked=asked: asked[:, i], len(group), target)
        ratio = env.target.ratio if target is None else target
        for k, record in enumerate(group):
            if np.max(np.abs(applied[k] - asked[k])) > 1e-6:  # the new wall would change the policy
                continue
            outcome = dataclasses.replace(env.outcome(env.widths(record.ratios), record.top1), target_ratio=ratio)
            kept.append(Relabelled(record.episode, observations[k], applied[k], float(env.reward_fn(outcome))))
    return sorted(kept, key=lambda e: e.episode)


def seed_plans(env: Any, records: list[EpisodeRecord], count: int, first: int, seed: int) -> list[EpisodePlan]:
    """Plans of episodes ``first, first + 1, ...`` playing the ``count`` best distinct policies of ``records``.

    Each is fitted to the episode's target (this env's, or with several each episode's own,
    :func:`agents.base.plan_target`) by :meth:`envs.ChannelPruningEnv.fit_ratios`: pruned more everywhere when
    over it, less when under it. Pushing a policy over the budget through the wall instead prunes its last groups
    to ``max_ratio`` (measured: 21-30% search-val top-1 for ResNet-20 policies from 50% at 30% FLOPs).
    """
    plans = []
    for i, record in enumerate(top_distinct(records, count)):
        episode = first + i
        target = plan_target(env, seed, episode)
        ratios = env.fit_ratios(record.ratios, target)
        actions = tuple(env.ratio_to_action(ratios[n]) for n in env.group_names)
        plans.append(EpisodePlan(episode, "sequence", 0, actions=actions, target=target))
    return plans


def warm_start(agent: DDPGAgent, env: Any, source: Source, fingerprint: str) -> dict[str, Any]:
    """Gives ``agent`` (a fresh DDPG agent) the networks of ``source`` and its relabelled replay.

    Args:
        agent: This search's agent (``SearchConfig`` refuses ``init_from`` for another agent than ddpg),
            before its first episode.
        env: This search's env.
        source: The search to start from (:func:`load_source`).
        fingerprint: This env's :meth:`envs.ChannelPruningEnv.fingerprint`.

    Returns:
        search.json's ``warm_start``: where from, its episodes, whether both measure alike, and the episodes
        relabelled into the replay.
    """
    from agents.ddpg import AMCDDPG

    try:
        agent.impl.take_over(AMCDDPG.load(source.agent_dir))
    except ConfigError as exc:
        raise ConfigError(f"init_from {source.out}: {exc}") from None
    same = source.fingerprint is not None and source.fingerprint == fingerprint
    episodes = relabel(env, source.records) if same else []
    for e in episodes:
        agent.impl.store_episode(list(e.observations), [np.array([a], dtype=np.float32) for a in e.actions], e.reward)
    return {
        "from": str(source.out),
        "source_episodes": source.episode,
        "same_evaluation": same,
        "replay_episodes": len(episodes),
    }
