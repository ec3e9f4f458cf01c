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

import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from typing import Any

from agents.base import EpisodePlan
from agents.rollout import EpisodeResult, EpisodeRunner
from amc.errors import first_line

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
    ``cost_model`` (the learner's, so that every worker budgets against the same measured latency table),
    ``calibration`` (the learner's calibration batches; see :func:`worker_payload`) and ``load_data`` (the workspace
    came without data: load the search-val split here, see :func:`load_eval_data`)."""
    from envs import ChannelPruningEnv

    ws = payload["ws"]
    if payload.get("load_data"):
        ws = dataclasses.replace(ws, data=load_eval_data(payload["env_config"]))
    return ChannelPruningEnv.from_workspace(
        ws,
        payload["env_config"],
        payload.get("cost_model"),
        payload.get("progress", True),
        payload.get("calibration"),
    )


def load_eval_data(env_config: Any) -> Any:
    """``env_config.data`` loaded here with only the search-val split, as the tensors an episode evaluates on
    (``eval_batches`` applied): the same images :func:`worker_payload` ships, read from the data set's path (or
    generated) on this node. The training, test and selection splits are dropped once loaded."""
    from torch.utils.data import TensorDataset

    from amc.data import load_data
    from envs.evaluation import fixed_size_batches, real_images

    data = load_data(env_config.data)
    size, limit = env_config.eval_batch_size, env_config.eval_batches or None
    val = TensorDataset(*real_images(fixed_size_batches(data.loader("val", size), size, limit)))
    return dataclasses.replace(data, train=None, val=val, test=None, selection=None)


def worker_payload(payload: dict, env: Any, worker_data: str = "object_store") -> dict:
    """What a rollout worker reads, from the learner's ``payload`` and its env ``env``: the dense model and its traced
    groups, the env config and cost model, ``env``'s calibration batches, and the search-val images as tensors
    (``worker_data`` ``object_store``) or nothing of the data (``path``: each worker loads them, see
    :func:`load_eval_data`).

    An episode reads nothing else: the training split (only its calibration batches), the test and the selection
    splits (evaluated by the learner at the end) stay out of the object store, and a data set read through
    transforms or from a larger array ships only the search-val images it yields.
    """
    from torch.utils.data import TensorDataset

    ws = payload["ws"]
    if worker_data == "path":
        return {**payload, "ws": dataclasses.replace(ws, data=None), "calibration": env.calibration, "load_data": True}
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


ROLLOUT_TIMEOUT_ENV = "AMC_ROLLOUT_TIMEOUT"
"""Environment variable: seconds a parallel search may go without any episode finishing (0: no limit)."""
DEFAULT_ROLLOUT_TIMEOUT = 1800.0
"""Seconds without a finished episode before a parallel search stops with :class:`amc.errors.RolloutError`."""
PLACE_LIMIT_S = 300.0
"""Seconds a parallel search whose workers were all lost waits for Ray to start a replacement before giving up."""
STALL_REPORT_S = 60.0
"""Seconds without a finished episode before the pool says what it is waiting for (then once per interval), or three
times the longest episode so far if that is longer (five times this before the first episode: workers start)."""


class RolloutPool:
    """``workers`` Ray actors sharing one payload (model, data, env config) from the object store.

    The interface of :class:`agents.rollout.LocalRollouts`: :meth:`free`, :meth:`submit`,
    :meth:`next_result`, :meth:`shutdown` and :attr:`timeline`; :meth:`busy` and :meth:`pid` say which
    worker plays which episode in which process.

    A worker that dies (its process killed, or its node lost) loses only its episode: the same plan runs again on
    the first worker free, and a replacement actor is asked for, which joins when Ray places it (a cluster that
    lost a node may have no CPU for it; the search goes on with the workers left). Fewer workers than asked start
    when the cluster has fewer CPUs. Nothing waits silently: past :meth:`report_after` without a finished episode
    the pool logs what it waits for, and past ``$AMC_ROLLOUT_TIMEOUT`` seconds (default
    :data:`DEFAULT_ROLLOUT_TIMEOUT`), or when no worker is left to run the lost episodes, it raises
    :class:`amc.errors.RolloutError` with the reason.

    Args:
        payload: The engine workspace (dense model, data, traced groups) and the env config (see :func:`build_env`).
        workers: Number of rollout actors.
        ddpg_config: DDPG settings (network shape of the actor).
        threads: torch threads per worker (0: local CPUs / workers).
        timeout: Seconds without a finished episode before giving up (None: ``$AMC_ROLLOUT_TIMEOUT``; 0: never).
    """

    def __init__(
        self, payload: dict, workers: int, ddpg_config: Any, threads: int = 0, timeout: float | None = None
    ) -> None:
        from amc.time_limit import seconds_from_env

        ray = require_ray()
        self.ray = ray
        self.timeout = seconds_from_env(ROLLOUT_TIMEOUT_ENV, DEFAULT_ROLLOUT_TIMEOUT) if timeout is None else timeout
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if 0 < cpus < workers:
            log.warning(
                "%d rollout workers asked, but the Ray cluster has %d CPUs (one per worker): starting %d",
                workers,
                cpus,
                cpus,
            )
            workers = cpus
        self.payload_ref = ray.put(payload)
        self.threads = threads or max(1, local_cpus() // workers)
        self.ddpg_config = ddpg_config
        self._cls = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self.actors: list[Any] = []
        self._pids: list[Any] = []  # object refs of each actor's process id, asked for first thing
        for _ in range(workers):
            self._spawn()
        self.restarts = 0
        """Replacement workers asked for after a worker died."""
        self.lost: list[dict] = []
        """One entry per worker that died: ``worker`` (index), ``episode`` (the one it was playing, run again),
        ``error`` (Ray's reason, first line)."""
        self.timeline: list[tuple[int, int, float, float]] = []
        """(worker, episode, started, finished) of every episode played, in the order they finished
        (``time.time()`` on the worker's machine)."""
        self.published = 0
        """Actor weight versions put into the object store."""
        self._idle = list(range(workers))
        self._pending: dict[Any, tuple[int, EpisodePlan]] = {}
        self._starting: dict[Any, int] = {}  # process-id ref of a replacement not yet placed -> its worker index
        self._retry: deque[EpisodePlan] = deque()  # plans of lost episodes, waiting for a worker
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
        """Each live worker's peak resident memory so far, in MiB (see :func:`worker_payload` for what it holds)."""
        live = [actor for index, actor in enumerate(self.actors) if self._live(index)]
        return self.ray.get([actor.peak_rss_mb.remote() for actor in live])

    def _live(self, index: int) -> bool:
        return self.actors[index] is not None and self._pids[index] not in self._starting

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

    def _run_lost(self) -> None:
        """Hands the plans of lost episodes to idle workers, oldest first."""
        while self._retry and self._idle:
            self._start(self._idle.pop(), self._retry.popleft())

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
        waiting = [plan for _, plan in self._pending.values()] + list(self._retry)  # in flight, or lost and queued
        used = {self._version(p) for p in waiting if p.actor_state is not None}
        for key in [k for k in self._weights if k not in used and k != self._latest]:
            del self._weights[key]

    def next_result(self) -> EpisodeResult:
        """The next episode to finish (an episode whose worker died runs again on the first worker free).

        Raises:
            RolloutError: when lost episodes wait and no worker is left or can be started, or when no episode finished
                for ``timeout`` seconds.
        """
        waiting_since = last_report = time.monotonic()
        while True:
            self._run_lost()
            refs = [*self._pending, *self._starting]
            if not refs:
                raise self._stuck("every rollout worker was lost and Ray has none to start again")
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=min(STALL_REPORT_S, self.timeout or STALL_REPORT_S))
            now = time.monotonic()
            if not ready:
                if not self._pending and now - waiting_since >= PLACE_LIMIT_S:
                    raise self._stuck(f"no rollout worker is left and Ray started none in {now - waiting_since:.0f} s")
                if self.timeout and now - waiting_since >= self.timeout:
                    raise self._stuck(
                        f"no episode finished in {now - waiting_since:.0f} s (${ROLLOUT_TIMEOUT_ENV}={self.timeout:g}; "
                        "raise it for episodes that take longer, 0 for no limit)"
                    )
                if now - last_report >= self.report_after():
                    log.warning("waiting %.0f s for an episode: %s", now - waiting_since, self._waiting_for())
                    last_report = now
                continue
            (ref,) = ready
            if ref in self._starting:  # a replacement worker was placed, or failed to start
                index = self._starting.pop(ref)
                try:
                    self.ray.get(ref)
                except self.ray.exceptions.RayActorError as exc:
                    log.warning("replacement rollout worker %d did not start (%s)", index, first_line(exc))
                    self.actors[index] = None
                else:
                    self._idle.append(index)
                continue
            index, plan = self._pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self._lose(index, plan, exc)
                continue
            self._idle.append(index)
            self._run_lost()
            self._release()
            self.timeline.append((index, plan.episode, result.started, result.finished))
            return dataclasses.replace(result, plan=plan)

    def report_after(self) -> float:
        """Seconds without a finished episode before the pool logs what it waits for: :data:`STALL_REPORT_S`, or three
        times the longest episode so far (five times :data:`STALL_REPORT_S` before the first: workers start)."""
        if not self.timeline:
            return 5 * STALL_REPORT_S
        return max(STALL_REPORT_S, 3 * max(finished - started for _, _, started, finished in self.timeline))

    def _lose(self, index: int, plan: EpisodePlan, exc: BaseException) -> None:
        """Worker ``index`` died playing ``plan``: the plan runs again on the next worker free; a replacement is asked
        for, which joins when Ray places it."""
        log.warning(
            "rollout worker %d died during episode %d (%s); the episode runs again on the next worker free",
            index,
            plan.episode,
            first_line(exc),
        )
        self.lost.append({"worker": index, "episode": plan.episode, "error": first_line(exc)})
        self._retry.append(plan)
        with contextlib.suppress(Exception):  # an actor Ray calls unavailable could come back: it must not
            self.ray.kill(self.actors[index], no_restart=True)
        self.replace(index)

    def replace(self, index: int) -> None:
        """Asks Ray for a new actor at ``index`` after the old one died; it takes episodes once it has started."""
        self._spawn(index)
        self._starting[self._pids[index]] = index
        self.restarts += 1

    def _waiting_for(self) -> str:
        playing = ", ".join(f"episode {plan.episode} on worker {index}" for index, plan in self._pending.values())
        parts = [playing or "no episode in flight"]
        if self._starting:
            parts.append(
                f"{len(self._starting)} replacement worker(s) not started (Ray has no free CPU for them yet: "
                f"`ray status`; free now: {self.ray.available_resources().get('CPU', 0):g} CPU)"
            )
        if self._retry:
            parts.append("lost episodes waiting: " + ", ".join(str(p.episode) for p in self._retry))
        return "; ".join(parts)

    def _stuck(self, reason: str) -> Exception:
        from amc.errors import RolloutError

        return RolloutError(f"the parallel search cannot go on: {reason}; {self._waiting_for()}")

    def shutdown(self) -> None:
        for actor in self.actors:
            if actor is not None:
                self.ray.kill(actor)
