"""The episode runner: plays one :class:`~agents.base.EpisodePlan` in an environment.

Every search runs its episodes here, whether in-process (:class:`LocalRollouts`, one worker) or on Ray
actors (:class:`agents.parallel.RolloutPool`), so an episode depends only on its plan: the same plan
gives the same observations, actions, reward and record in any process.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.base import EpisodePlan
from agents.records import EpisodeRecord


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode.

    Attributes:
        plan: The plan it ran.
        observations: The observations, the one after the last step included.
        actions: The actions the budget wall let through (what the agent learns from).
        reward: The final reward.
        record: What the episode found.
        started: Wall-clock time (``time.time()``) the runner started playing it, where it ran.
        finished: Wall-clock time it finished.
    """

    plan: EpisodePlan
    observations: list[np.ndarray]
    actions: list[np.ndarray]
    reward: float
    record: EpisodeRecord
    started: float = 0.0
    finished: float = 0.0


class EpisodeRunner:
    """Runs plans in one environment (in-process, or inside a Ray rollout worker).

    Args:
        env: The channel-pruning environment.
        ddpg_config: DDPG settings (the actor's network shape, for ``actor`` plans; None: the defaults).
    """

    def __init__(self, env: Any, ddpg_config: Any = None) -> None:
        self.env = env
        self.ddpg_config = ddpg_config
        self._actor = None

    def run(self, plan: EpisodePlan) -> EpisodeResult:
        """Plays ``plan``: one action per group, each bounded by the env's budget wall."""
        started = time.time()
        act = self._policy(plan, np.random.default_rng(plan.seed))
        options = None if plan.target is None else {"target": plan.target}
        obs, _ = self.env.reset(seed=plan.episode, options=options)
        observations, actions, done, reward, info = [obs], [], False, 0.0, {}
        while not done:
            obs, reward, done, _, info = self.env.step(act(obs))
            observations.append(obs)
            # the agent learns from the action the budget wall let through; AMC's code stores the actor's action
            # before the wall instead (a documented difference: the critic then sees the ratio actually applied)
            actions.append(np.array([info["applied_action"]], dtype=np.float32))
        record = episode_record(plan, float(reward), info)
        return EpisodeResult(plan, observations, actions, float(reward), record, started, time.time())

    def _policy(self, plan: EpisodePlan, rng: np.random.Generator):
        if plan.kind == "random":
            return lambda obs: rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
        if plan.kind == "fixed":
            return lambda obs: np.array([plan.action], dtype=np.float32)
        if plan.kind == "sequence":
            steps = iter(plan.actions)
            return lambda obs: np.array([next(steps)], dtype=np.float32)
        if plan.kind != "actor":
            raise ValueError(f"unknown plan kind {plan.kind!r}")
        from agents.ddpg import AMCDDPG, DDPGConfig, truncated_normal_action

        if self._actor is None:
            self._actor = AMCDDPG(self.env, self.ddpg_config or DDPGConfig())
        self._actor.set_actor_state(plan.actor_state)
        return lambda obs: truncated_normal_action(
            self._actor.act_deterministic(obs).astype(np.float64), plan.sigma, rng
        )


def episode_record(plan: EpisodePlan, reward: float, info: dict[str, Any]) -> EpisodeRecord:
    """The record of an episode of ``plan`` from its final reward and the last step's ``info``."""
    return EpisodeRecord(
        plan.episode,
        reward,
        float(info["top1"]),
        float(info["flops_ratio"]),
        float(info["params_ratio"]),
        {k: float(v) for k, v in info["ratios"].items()},
        plan.planned_after,
        _optional(info.get("latency_ms")),
        _optional(info.get("latency_ratio")),
        plan.target,
    )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


class LocalRollouts:
    """One rollout worker in this process: the :class:`EpisodeRunner` of the search's own environment.

    Has the interface of :class:`agents.parallel.RolloutPool`: :meth:`free`, :meth:`submit`,
    :meth:`next_result`, :meth:`shutdown` and :attr:`timeline`. A submitted plan runs when its result is
    asked for.
    """

    def __init__(self, env: Any, ddpg_config: Any) -> None:
        self.runner = EpisodeRunner(env, ddpg_config)
        self._pending: deque[EpisodePlan] = deque()
        self.timeline: list[tuple[int, int, float, float]] = []
        """(worker, episode, started, finished) of every episode played, in the order they finished."""

    def free(self) -> int:
        """Workers without an episode."""
        return 1 - len(self._pending)

    def submit(self, plan: EpisodePlan) -> None:
        if not self.free():
            raise RuntimeError("the in-process worker already has an episode")
        self._pending.append(plan)

    def next_result(self) -> EpisodeResult:
        result = self.runner.run(self._pending.popleft())
        self.timeline.append((0, result.plan.episode, result.started, result.finished))
        return result

    def shutdown(self) -> None:
        self._pending.clear()
