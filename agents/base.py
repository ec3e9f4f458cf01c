"""Search agents behind one small interface, looked up by name: ``ddpg``, ``random``, ``uniform``.

An agent plans episodes (:class:`EpisodePlan`) and learns from them; :class:`agents.rollout.EpisodeRunner`
plays the plans, in-process or on Ray actors alike. All agents act through the same environment, so the
budget wall bounds every one of them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amc.errors import ConfigError
from amc.registry import Registry
from envs import ChannelPruningEnv
from envs.targets import TargetRange, episode_target

TARGET_BAND = 0.05
"""With a range of targets, the elites of an episode are the best episodes whose target is within this of its own."""


@dataclass(frozen=True)
class EpisodePlan:
    """How to act in one episode: what :class:`agents.rollout.EpisodeRunner` plays (shipped to Ray actors).

    Attributes:
        episode: Episode index.
        kind: ``random`` (uniform actions), ``actor`` (actor network plus truncated-normal noise), ``fixed``
            (one action for every group) or ``sequence`` (``actions[i]`` for the i-th group).
        seed: Seed of the episode's random numbers.
        sigma: Noise sigma of an ``actor`` plan.
        actor_state: Actor weights of an ``actor`` plan.
        action: The action of a ``fixed`` plan.
        actions: The per-group actions of a ``sequence`` plan.
        planned_after: Episodes the agent had learned from when it made the plan (set by the search loop;
            None when the plan does not depend on what the agent learned, see :meth:`SearchAgent.fixed_plan`).
        weights_version: Version of ``actor_state`` (the learner's gradient steps when it was taken): plans of
            one version carry the same weights, which a Ray search puts into the object store once.
        value: The critics' prediction of the plan's final reward when the agent chose it among proposals
            (:mod:`agents.proposals`); None otherwise.
        target: The episode's target ratio when the search has several (``env.targets``); None otherwise.
    """

    episode: int
    kind: str
    seed: int
    sigma: float = 0.0
    actor_state: Any = None
    action: float = 0.0
    actions: tuple[float, ...] = ()
    planned_after: int | None = None
    weights_version: int | None = None
    value: float | None = None
    target: float | None = None


def plan_target(env: ChannelPruningEnv, seed: int, episode: int) -> float | None:
    """The target of ``episode`` in a search seeded ``seed`` over ``env.config.targets`` (None: one target)."""
    targets = env.config.targets
    return None if targets is None else episode_target(targets, seed, episode)


def episode_seed(seed: int, episode: int) -> int:
    """A well-mixed seed for (search seed, episode)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class SearchAgent:
    """Plans each episode (one action per group); learns (or not) at the end of each episode.

    The search calls :meth:`plan` for episodes in episode order and :meth:`end_episode` for finished
    episodes in episode order; how the two interleave is fixed by the number of workers (see
    :class:`agents.search.Search`), never by timing.

    Attributes:
        single_episode: The agent always proposes the same policy, so one episode is enough.
        multi_target: The agent can search several targets at once (``env.targets``): its plans carry each
            episode's target (:func:`plan_target`).
    """

    single_episode: bool = False
    multi_target: bool = False

    def plan(self, episode: int) -> EpisodePlan:
        """How to act in ``episode``."""
        raise NotImplementedError

    def fixed_plan(self, episode: int) -> bool:
        """Whether :meth:`plan` gives the same plan for ``episode`` whatever the agent has learned.

        Such plans draw nothing from the agent's state, so a search may make them early, for idle workers.
        """
        return False

    def adopt(self, plan: EpisodePlan) -> None:
        """Takes back a plan this agent made before the checkpoint it was restored from (not yet finished)."""

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        """Called after the last step with the episode's observations, actions and reward."""
        return {}

    @property
    def noise(self) -> float | None:
        """Current exploration noise, for the progress bar (None when the agent has none)."""
        return None

    def save(self, directory: Path) -> None:
        """Writes what :meth:`restore` needs to continue exactly."""

    def restore(self, directory: Path) -> None:
        """Continues from what :meth:`save` wrote."""


AgentFactory = Callable[[ChannelPruningEnv, "object", int], SearchAgent]
AGENTS: Registry[AgentFactory] = Registry("agent")


class RandomAgent(SearchAgent):
    """Uniform random actions in [-1, 1] (then bounded by the env's budget wall), seeded per episode."""

    multi_target = True

    def __init__(self, seed: int, env: ChannelPruningEnv | None = None) -> None:
        self.seed = seed
        self.env = env

    def plan(self, episode: int) -> EpisodePlan:
        target = None if self.env is None else plan_target(self.env, self.seed, episode)
        return EpisodePlan(episode, "random", episode_seed(self.seed, episode), target=target)

    def fixed_plan(self, episode: int) -> bool:
        return True


def uniform_action(env: ChannelPruningEnv, target: float | None = None) -> float:
    """The action that gives every group the uniform ratio (the smallest that meets the target)."""
    action = env.ratio_to_action(next(iter(env.uniform_ratios(target).values())))
    # nudge up so that float32 rounding never maps back to a ratio just below the bisected one
    return float(np.clip(np.float32(action + 1e-6), -1.0, 1.0))


def uniform_plan(env: ChannelPruningEnv, episode: int, target: float | None = None) -> EpisodePlan:
    """A plan playing the uniform policy of ``target``, as per-group actions (so that any agent can adopt it)."""
    actions = (uniform_action(env, target),) * len(env.group_names)
    return EpisodePlan(episode, "sequence", 0, actions=actions, target=target)


class UniformAgent(SearchAgent):
    """The same ratio in every group: the smallest that meets the target on the exact count."""

    single_episode = True

    def __init__(self, env: ChannelPruningEnv) -> None:
        self.action = np.array([uniform_action(env)], dtype=np.float32)

    def plan(self, episode: int) -> EpisodePlan:
        return EpisodePlan(episode, "fixed", 0, action=float(self.action[0]))

    def fixed_plan(self, episode: int) -> bool:
        return True


class DDPGAgent(SearchAgent):
    """The AMC-style DDPG agent (:class:`agents.ddpg.AMCDDPG`).

    Warm-up episodes are random plans seeded per episode (``warmup_design: uniform``) or the rows of a Latin
    hypercube (``lhs``). Later ones, with one proposal, ship the actor's weights, the current noise sigma and a
    per-episode seed of the truncated-normal exploration (drawn in the runner; plans made between two gradient
    steps share one copy of the weights, one version); with several proposals the learner walks them through
    the wall, the critics choose one (:mod:`agents.proposals`) and the plan carries its actions. With several
    targets (``env.targets``), each plan carries its episode's target, which the actor and the critics see in
    the observation, and the elite proposals perturb the best episodes of that target (of targets within
    :data:`TARGET_BAND` for a range).
    """

    multi_target = True

    def __init__(self, env: ChannelPruningEnv, config: object, seed: int) -> None:
        from agents.ddpg import AMCDDPG

        self.env = env
        self.impl = AMCDDPG(env, config, seed=seed)
        self.seed = seed
        self._weights: tuple[int, Any] | None = None  # (version, actor state) of the latest plan
        self._design = None  # the warm-up's actions, (episodes, groups), unless they are drawn per episode
        if self.impl.config.warmup_design != "uniform":
            from agents.ddpg import warmup_actions

            cfg = self.impl.config
            self._design = warmup_actions(cfg.warmup_design, cfg.warmup_episodes, len(env.group_names), seed)
        self._values: dict[int, float] = {}  # episode -> the critics' prediction of a planned proposal

    def _warmup_plan(self, episode: int, target: float | None) -> EpisodePlan:
        if self._design is None:
            return EpisodePlan(episode, "random", episode_seed(self.seed, episode), target=target)
        actions = tuple(float(a) for a in self._design[episode])
        return EpisodePlan(episode, "sequence", 0, actions=actions, target=target)

    def _proposal_plan(self, episode: int, target: float | None) -> EpisodePlan:
        from agents.proposals import walk_proposals

        config = self.impl.config
        rng = np.random.default_rng(episode_seed(self.seed, episode))
        elites = self.impl.elites(config.elites, len(self.env.group_names), target, self._target_band())
        chosen = walk_proposals(
            self.env,
            self.impl,
            self.impl.sigma,
            rng,
            config.proposals,
            config.optimism,
            elites,
            config.value_steps,
            target,
        ).best()
        self._values[episode] = chosen.predicted
        return EpisodePlan(episode, "sequence", 0, actions=chosen.actions, value=chosen.predicted, target=target)

    def _target_band(self) -> float:
        """How far another episode's target may be for its actions to seed this one's elite proposals."""
        targets = self.env.config.targets
        return TARGET_BAND if isinstance(targets, TargetRange) else 0.0

    def plan(self, episode: int) -> EpisodePlan:
        target = plan_target(self.env, self.seed, episode)
        if episode < self.impl.config.warmup_episodes:
            return self._warmup_plan(episode, target)
        if self.impl.config.proposals > 1:
            return self._proposal_plan(episode, target)
        version = self.impl.updates
        if self._weights is None or self._weights[0] != version:
            self._weights = (version, self.impl.get_actor_state())
        return EpisodePlan(
            episode,
            "actor",
            episode_seed(self.seed, episode),
            self.impl.sigma,
            self._weights[1],
            weights_version=version,
            target=target,
        )

    def fixed_plan(self, episode: int) -> bool:
        return episode < self.impl.config.warmup_episodes

    def adopt(self, plan: EpisodePlan) -> None:
        if plan.value is not None:
            self._values[plan.episode] = plan.value

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        predicted = self._values.pop(self.impl.episode, None)
        stats = self.impl.end_episode(list(observations), list(actions), final_reward)
        if predicted is not None:  # the critics' fit: what they predicted for the proposal they chose
            stats["predicted_reward"] = predicted
        return stats

    @property
    def noise(self) -> float | None:
        return self.impl.sigma

    def save(self, directory: Path) -> None:
        self.impl.save(directory)

    def restore(self, directory: Path) -> None:
        from agents.ddpg import AMCDDPG

        self.impl = AMCDDPG.load(directory)
        self._weights = None


AGENTS.register("ddpg", lambda env, ddpg_config, seed: DDPGAgent(env, ddpg_config, seed))
AGENTS.register("random", lambda env, ddpg_config, seed: RandomAgent(seed, env))
AGENTS.register("uniform", lambda env, ddpg_config, seed: UniformAgent(env))


def create_agent(name: str, env: ChannelPruningEnv, ddpg_config: object, seed: int) -> SearchAgent:
    """Builds the agent registered as ``name``."""
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS.names())}")
    return AGENTS.get(name)(env, ddpg_config, seed)
