"""Parallel rollouts on Ray: actors that run whole episodes of the plans the learner hands them.

Each :class:`RolloutPool` actor is a Ray actor with its own environment and the same
:class:`agents.rollout.EpisodeRunner` an in-process search uses; the dense model and the data are put
into the object store once and shared by all workers. The search loop (:class:`agents.search.Search`)
decides which plan runs when (see its docstring); the pool runs plans and hands back results as they
finish. An episode lost with a dead worker is run again, with the same plan, on a restarted actor.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from agents.base import EpisodePlan
from agents.rollout import EpisodeResult, EpisodeRunner

log = logging.getLogger(__name__)


def require_ray():
    try:
        import ray
    except ModuleNotFoundError as exc:  # pragma: no cover - ray is part of the pinned stack
        raise ModuleNotFoundError("parallel searches need Ray: pip install 'ray[tune]'") from exc
    return ray


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        self.runner = EpisodeRunner(build_env(payload), ddpg_config)

    def run(self, plan: EpisodePlan) -> EpisodeResult:
        return self.runner.run(plan)

    def pid(self) -> int:
        return os.getpid()


class RolloutPool:
    """``workers`` Ray actors sharing one payload (model, data, env config) from the object store.

    The interface of :class:`agents.rollout.LocalRollouts`: :meth:`free`, :meth:`submit`,
    :meth:`next_result` and :meth:`shutdown`.

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
        self._idle = list(range(workers))
        self._pending: dict[Any, tuple[int, EpisodePlan]] = {}

    def _spawn(self):
        return self._cls.remote(self.payload_ref, self.threads, self.ddpg_config)

    def free(self) -> int:
        """Workers without an episode."""
        return len(self._idle)

    def submit(self, plan: EpisodePlan) -> None:
        """Hands ``plan`` to an idle worker."""
        self._start(self._idle.pop(), plan)

    def _start(self, index: int, plan: EpisodePlan) -> None:
        self._pending[self.actors[index].run.remote(plan)] = (index, plan)

    def next_result(self) -> EpisodeResult:
        """The next episode to finish (an episode whose worker died is run again on a restarted one)."""
        while True:
            (ref,), _ = self.ray.wait(list(self._pending), num_returns=1)
            index, plan = self._pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                log.warning("rollout worker %d died during episode %d; restarting it", index, plan.episode)
                self.replace(index)
                self._start(index, plan)
                continue
            self._idle.append(index)
            return result

    def replace(self, index: int) -> None:
        """Restarts the actor at ``index`` after it died."""
        self.actors[index] = self._spawn()
        self.restarts += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
