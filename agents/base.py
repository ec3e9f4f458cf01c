"""Search agents behind one small interface, looked up by name: ``ddpg``, ``random``, ``uniform``.

All agents act through the same environment, so the budget wall bounds every one of them alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amc.errors import ConfigError
from amc.registry import Registry
from envs import ChannelPruningEnv


@dataclass(frozen=True)
class EpisodePlan:
    """How a rollout worker should act in one episode (parallel searches ship this, not the agent).

    Attributes:
        episode: Episode index.
        kind: ``random`` (uniform actions), ``actor`` (actor network plus truncated-normal noise), ``fixed``
            (one action for every group) or ``sequence`` (``actions[i]`` for the i-th group).
        seed: Seed of the episode's random numbers.
        sigma: Noise sigma of an ``actor`` plan.
        actor_state: Actor weights of an ``actor`` plan.
        action: The action of a ``fixed`` plan.
        actions: The per-group actions of a ``sequence`` plan.
    """

    episode: int
    kind: str
    seed: int
    sigma: float = 0.0
    actor_state: Any = None
    action: float = 0.0
    actions: tuple[float, ...] = ()


def episode_seed(seed: int, episode: int) -> int:
    """A well-mixed seed for (search seed, episode)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class SearchAgent:
    """Picks one action per group; learns (or not) at the end of each episode.

    Attributes:
        single_episode: The agent always proposes the same policy, so one episode is enough.
    """

    single_episode: bool = False

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        """Called after the last step with the episode's observations, actions and reward."""
        return {}

    @property
    def noise(self) -> float | None:
        """Current exploration noise, for the progress bar (None when the agent has none)."""
        return None

    def plan(self, episode: int) -> EpisodePlan:
        """What a rollout worker should do in ``episode`` (parallel searches)."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Writes what :meth:`restore` needs to continue exactly."""

    def restore(self, directory: Path) -> None:
        """Continues from what :meth:`save` wrote."""


AgentFactory = Callable[[ChannelPruningEnv, "object", int], SearchAgent]
AGENTS: Registry[AgentFactory] = Registry("agent")


class RandomAgent(SearchAgent):
    """Uniform random actions in [-1, 1] (then bounded by the env's budget wall)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def plan(self, episode: int) -> EpisodePlan:
        return EpisodePlan(episode, "random", episode_seed(self.seed, episode))

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rng.json").write_text(json.dumps(self.rng.bit_generator.state))

    def restore(self, directory: Path) -> None:
        self.rng.bit_generator.state = json.loads((directory / "rng.json").read_text())


class UniformAgent(SearchAgent):
    """The same ratio in every group: the smallest that meets the target on the exact count."""

    single_episode = True

    def __init__(self, env: ChannelPruningEnv) -> None:
        action = env.ratio_to_action(next(iter(env.uniform_ratios().values())))
        # nudge up so that float32 rounding never maps back to a ratio just below the bisected one
        self.action = np.clip(np.array([action + 1e-6], dtype=np.float32), -1.0, 1.0)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.action.copy()

    def plan(self, episode: int) -> EpisodePlan:
        return EpisodePlan(episode, "fixed", 0, action=float(self.action[0]))


class DDPGAgent(SearchAgent):
    """The AMC-style DDPG agent (:class:`agents.ddpg.AMCDDPG`)."""

    def __init__(self, env: ChannelPruningEnv, config: object, seed: int) -> None:
        from agents.ddpg import AMCDDPG

        self.impl = AMCDDPG(env, config, seed=seed)
        self.seed = seed

    def plan(self, episode: int) -> EpisodePlan:
        if episode < self.impl.config.warmup_episodes:
            return EpisodePlan(episode, "random", episode_seed(self.seed, episode))
        return EpisodePlan(
            episode, "actor", episode_seed(self.seed, episode), self.impl.sigma, self.impl.get_actor_state()
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.impl.act(obs)

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        return self.impl.end_episode(list(observations), list(actions), final_reward)

    @property
    def noise(self) -> float | None:
        return self.impl.sigma

    def save(self, directory: Path) -> None:
        self.impl.save(directory)

    def restore(self, directory: Path) -> None:
        from agents.ddpg import AMCDDPG

        self.impl = AMCDDPG.load(directory)


AGENTS.register("ddpg", lambda env, ddpg_config, seed: DDPGAgent(env, ddpg_config, seed))
AGENTS.register("random", lambda env, ddpg_config, seed: RandomAgent(seed))
AGENTS.register("uniform", lambda env, ddpg_config, seed: UniformAgent(env))


def create_agent(name: str, env: ChannelPruningEnv, ddpg_config: object, seed: int) -> SearchAgent:
    """Builds the agent registered as ``name``."""
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS.names())}")
    return AGENTS.get(name)(env, ddpg_config, seed)
