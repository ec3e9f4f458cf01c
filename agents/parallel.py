"""Parallel rollouts on Ray: actors that run whole episodes with the current actor weights.

Each :class:`RolloutWorker` is a Ray actor with its own environment; the dense model and the data are
put into the object store once and shared by all workers. The learner (the search loop) keeps one
episode in flight per worker, hands each a plan (random actions during warm-up, else the latest actor
weights plus the noise sigma and a seed), and learns from finished episodes in episode order, so every
transition of an episode still gets that episode's final reward (AMC's credit assignment) and the
search's records and checkpoints stay a prefix of the episode sequence. An episode lost with a dead
worker is run again on a restarted actor.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.base import EpisodePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode as a worker returns it."""

    plan: EpisodePlan
    observations: list[np.ndarray]
    actions: list[np.ndarray]
    reward: float
    info: dict[str, Any]


def require_ray():
    try:
        import ray
    except ModuleNotFoundError as exc:  # pragma: no cover - ray is part of the pinned stack
        raise ModuleNotFoundError("parallel searches need Ray: pip install 'ray[tune]'") from exc
    return ray


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class PlanExecutor:
    """Runs an :class:`EpisodePlan` in an environment (inside a worker, or in-process)."""

    def __init__(self, env: Any, ddpg_config: Any) -> None:
        self.env = env
        self.ddpg_config = ddpg_config
        self._actor = None

    def run(self, plan: EpisodePlan) -> EpisodeResult:
        rng = np.random.default_rng(plan.seed)
        act = self._policy(plan, rng)
        obs, _ = self.env.reset(seed=plan.episode)
        observations, actions, done, reward, info = [obs], [], False, 0.0, {}
        while not done:
            obs, reward, done, _, info = self.env.step(act(obs))
            observations.append(obs)
            actions.append(np.array([info["applied_action"]], dtype=np.float32))  # after the wall (see run_episode)
        return EpisodeResult(plan, observations, actions, float(reward), info)

    def _policy(self, plan: EpisodePlan, rng: np.random.Generator):
        if plan.kind == "random":
            return lambda obs: rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
        if plan.kind == "fixed":
            return lambda obs: np.array([plan.action], dtype=np.float32)
        if plan.kind == "sequence":
            steps = iter(plan.actions)
            return lambda obs: np.array([next(steps)], dtype=np.float32)
        from agents.ddpg import AMCDDPG, truncated_normal_action

        if self._actor is None:
            self._actor = AMCDDPG(self.env, self.ddpg_config)
        self._actor.set_actor_state(plan.actor_state)
        return lambda obs: truncated_normal_action(
            self._actor.act_deterministic(obs).astype(np.float64), plan.sigma, rng
        )


def build_env(payload: dict) -> Any:
    """The channel-pruning env for a payload of ``ws`` (engine workspace), ``env_config`` and optionally
    ``cost_model`` (the learner's, so that every worker budgets against the same measured latency table)."""
    from envs import ChannelPruningEnv

    return ChannelPruningEnv.from_workspace(
        payload["ws"], payload["env_config"], payload.get("cost_model"), payload.get("progress", True)
    )


class _Worker:
    """Body of the Ray actor (wrapped with ``ray.remote`` in :class:`RolloutPool`)."""

    def __init__(self, payload: dict, threads: int, ddpg_config: Any) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.executor = PlanExecutor(build_env(payload), ddpg_config)

    def run(self, plan: EpisodePlan) -> EpisodeResult:
        return self.executor.run(plan)

    def pid(self) -> int:
        return os.getpid()


class RolloutPool:
    """``workers`` Ray actors sharing one payload (model, data, env config) from the object store.

    Args:
        payload: The engine workspace (dense model, data, traced groups) and the env config (see :func:`build_env`).
        workers: Number of rollout actors.
        ddpg_config: DDPG settings (network shape of the actor).
        threads: torch threads per worker (0: local CPUs / workers).
    """

    def __init__(self, payload: dict, workers: int, ddpg_config: Any, threads: int = 0) -> None:
        ray = require_ray()
        self.ray = ray
        self.payload_ref = ray.put(payload)
        self.threads = threads or max(1, local_cpus() // workers)
        self.ddpg_config = ddpg_config
        self._cls = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self.actors = [self._spawn() for _ in range(workers)]
        self.restarts = 0

    def _spawn(self):
        return self._cls.remote(self.payload_ref, self.threads, self.ddpg_config)

    def submit(self, index: int, plan: EpisodePlan):
        return self.actors[index].run.remote(plan)

    def replace(self, index: int) -> None:
        """Restarts the actor at ``index`` after it died."""
        self.actors[index] = self._spawn()
        self.restarts += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
