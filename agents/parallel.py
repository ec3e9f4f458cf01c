"""Parallel rollouts on Ray: actors that run whole episodes of the plans the learner hands them.

Each :class:`RolloutPool` actor is a Ray actor with its own environment and the same
:class:`agents.rollout.EpisodeRunner` an in-process search uses; the dense model and the data are put
into the object store once and shared by all workers. The search loop (:class:`agents.search.Search`)
decides which plan runs when (see its docstring); the pool runs plans and hands back results as they
finish. The learner's actor weights go through the object store too: one ``ray.put`` per weights version
(:attr:`agents.base.EpisodePlan.weights_version`), shared by every plan that uses it, each worker
fetching a version once. Workers get only what an episode reads (:func:`worker_payload`). An episode lost with a dead worker is run again, with the same plan, on a
restarted actor.
"""

from __future__ import annotations

import dataclasses
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


def rollout_workers(workers: int | str) -> int:
    """A config's ``workers`` with ``auto`` resolved: the Ray actors to start (0: in-process, no Ray)."""
    return local_cpus() if workers == "auto" else int(workers)


def build_env(payload: dict) -> Any:
    """The channel-pruning env for a payload of ``ws`` (engine workspace), ``env_config`` and optionally
    ``cost_model`` (the learner's, so that every worker budgets against the same measured latency table) and
    ``calibration`` (the learner's calibration batches; see :func:`worker_payload`)."""
    from envs import ChannelPruningEnv

    return ChannelPruningEnv.from_workspace(
        payload["ws"],
        payload["env_config"],
        payload.get("cost_model"),
        payload.get("progress", True),
        payload.get("calibration"),
    )


def worker_payload(payload: dict, env: Any) -> dict:
    """What a rollout worker reads, from the learner's ``payload`` and its env ``env``: the dense model and its traced
    groups, the env config and cost model, ``env``'s calibration batches, and the search-val images as tensors.

    An episode reads nothing else: the training split (only its calibration batches), the test and the selection
    splits (evaluated by the learner at the end) stay out of the object store, and a data set read through
    transforms or from a larger array ships only the search-val images it yields.
    """
    from torch.utils.data import TensorDataset

    ws = payload["ws"]
    val = TensorDataset(*env.split_tensors("val"))
    data = dataclasses.replace(ws.data, train=None, val=val, test=None, selection=None)
    return {**payload, "ws": dataclasses.replace(ws, data=data), "calibration": env.calibration}


class _Worker:
    """Body of the Ray actor (wrapped with ``ray.remote`` in :class:`RolloutPool`)."""

    def __init__(self, payload: dict, threads: int, ddpg_config: Any) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = EpisodeRunner(build_env(payload), ddpg_config)
        self._weights: tuple[Any, Any] = (None, None)  # (object ref, actor state) of the latest version fetched

    def run(self, plan: EpisodePlan) -> EpisodeResult:
        """Plays ``plan``, whose actor weights may be an object ref (fetched once per version)."""
        import ray

        ref = plan.actor_state
        if isinstance(ref, ray.ObjectRef):
            if self._weights[0] != ref:
                self._weights = (ref, ray.get(ref))
            plan = dataclasses.replace(plan, actor_state=self._weights[1])
        return self.runner.run(plan)

    def pid(self) -> int:
        return os.getpid()

    def peak_rss_mb(self) -> float:
        """The most resident memory this worker's process has used, in MiB (Linux ``ru_maxrss`` is in KiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RolloutPool:
    """``workers`` Ray actors sharing one payload (model, data, env config) from the object store.

    The interface of :class:`agents.rollout.LocalRollouts`: :meth:`free`, :meth:`submit`,
    :meth:`next_result`, :meth:`shutdown` and :attr:`timeline`; :meth:`busy` and :meth:`pid` say which
    worker plays which episode in which process.

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
        self.actors: list[Any] = []
        self._pids: list[Any] = []  # object refs of each actor's process id, asked for first thing
        for _ in range(workers):
            self._spawn()
        self.restarts = 0
        self.timeline: list[tuple[int, int, float, float]] = []
        """(worker, episode, started, finished) of every episode played, in the order they finished
        (``time.time()`` on the worker's machine)."""
        self.published = 0
        """Actor weight versions put into the object store."""
        self._idle = list(range(workers))
        self._pending: dict[Any, tuple[int, EpisodePlan]] = {}
        self._weights: dict[Any, tuple[Any, Any]] = {}  # version key -> (actor state, its object ref)
        self._latest: Any = None

    def _spawn(self, index: int | None = None) -> None:
        """Starts a worker at ``index`` (None: a new one at the end)."""
        actor = self._cls.remote(self.payload_ref, self.threads, self.ddpg_config)
        pid = actor.pid.remote()
        if index is None:
            self.actors.append(actor)
            self._pids.append(pid)
        else:
            self.actors[index], self._pids[index] = actor, pid

    def pid(self, index: int) -> int:
        """The process id of worker ``index`` (on its node); answered even while the worker plays an episode."""
        return self.ray.get(self._pids[index])

    def peak_rss_mb(self) -> list[float]:
        """Each worker's peak resident memory so far, in MiB (see :func:`worker_payload` for what it holds)."""
        return self.ray.get([actor.peak_rss_mb.remote() for actor in self.actors])

    def busy(self) -> dict[int, int]:
        """Worker index -> the episode it is playing."""
        return {index: plan.episode for index, plan in self._pending.values()}

    def free(self) -> int:
        """Workers without an episode."""
        return len(self._idle)

    def submit(self, plan: EpisodePlan) -> None:
        """Hands ``plan`` to an idle worker."""
        self._start(self._idle.pop(), plan)

    def _start(self, index: int, plan: EpisodePlan) -> None:
        self._pending[self.actors[index].run.remote(self._shipped(plan))] = (index, plan)

    @staticmethod
    def _version(plan: EpisodePlan) -> Any:
        return ("id", id(plan.actor_state)) if plan.weights_version is None else plan.weights_version

    def _shipped(self, plan: EpisodePlan) -> EpisodePlan:
        """``plan`` with its actor weights as an object ref: put once per version, shared by its plans."""
        if plan.actor_state is None:
            return plan
        key = self._version(plan)
        if key not in self._weights:
            self._weights[key] = (plan.actor_state, self.ray.put(plan.actor_state))  # keeps the state alive
            self.published += 1
        self._latest = key
        return dataclasses.replace(plan, actor_state=self._weights[key][1])

    def _release(self) -> None:
        """Drops the object refs of weight versions no pending plan uses (the latest is kept for the next plans)."""
        used = {self._version(p) for _, p in self._pending.values() if p.actor_state is not None}
        for key in [k for k in self._weights if k not in used and k != self._latest]:
            del self._weights[key]

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
            self._release()
            self.timeline.append((index, plan.episode, result.started, result.finished))
            return dataclasses.replace(result, plan=plan)

    def replace(self, index: int) -> None:
        """Restarts the actor at ``index`` after it died."""
        self._spawn(index)
        self.restarts += 1

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
