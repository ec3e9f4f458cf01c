"""The search loop: episodes of an agent in the channel-pruning env, checkpoints, MLflow, outputs.

Outputs in the search directory:
- ``config.yaml``: the full search config (what ``--resume`` continues with);
- ``search.json``: target, uniform baseline, best policy and one record per episode;
- ``best_policy.json``: the best policy in the engine's format (``amc prune --policy`` applies it);
- ``best_policy.png`` / ``search_curves.png``: per-group ratios against uniform, reward and top-1 curves;
- ``checkpoint/``: agent, replay buffer, counters, records, the agent's statistics of every episode and
  the plans made but not yet learned from, every ``checkpoint_every`` episodes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agents.base import EpisodePlan, SearchAgent, create_agent, uniform_plan
from agents.checkpoints import load_checkpoint, save_checkpoint, stored_config
from agents.front_outputs import report_targets
from agents.outputs import write_outputs
from agents.records import EpisodeRecord, Hook, SearchConfig, SearchResult, SearchState, target_label
from agents.rollout import EpisodeResult, EpisodeRunner, LocalRollouts
from amc.config import flatten, save_yaml
from amc.errors import ConfigError
from amc.progress import Progress
from envs import ChannelPruningEnv

log = logging.getLogger(__name__)


def resolve_checkpoint(config: SearchConfig, cache_dir: Path | None = None, progress: bool = True) -> SearchConfig:
    """Fills ``env.checkpoint`` with a cached dense baseline (trained first when missing).

    A given checkpoint that exists is made absolute, so that config.yaml, the MLflow run and ``amc prune --policy``
    find it from any directory.

    Args:
        config: The search config.
        cache_dir: Cache directory (None: :func:`amc.baseline.default_cache_dir`).
        progress: Show progress while training (see :func:`amc.baseline.cached_baseline`).
    """
    if config.env.checkpoint:
        given = Path(config.env.checkpoint).expanduser()
        return config.replace(env=config.env.replace(checkpoint=str(given.resolve()))) if given.is_file() else config
    from amc.baseline import cached_baseline

    ckpt = cached_baseline(config.env.model, config.env.data, config.baseline, cache_dir, progress=progress)
    return config.replace(env=config.env.replace(checkpoint=str(ckpt)))


# --------------------------------------------------------------------------- the loop
def run_episode(
    env: ChannelPruningEnv, agent: SearchAgent, episode: int, ddpg_config: Any = None
) -> tuple[EpisodeRecord, dict[str, float]]:
    """Runs the agent's plan of one episode in ``env``; the agent learns from it; returns its record and statistics.

    ``ddpg_config``: the DDPG settings (actor shape) of ``actor`` plans (None: the defaults).
    """
    result = EpisodeRunner(env, ddpg_config).run(agent.plan(episode))
    return result.record, agent.end_episode(result.observations, result.actions, result.reward)


class Search:
    """Runs (or resumes) one search and writes its outputs.

    The agent plans episodes and learns from finished ones in episode order; an
    :class:`agents.rollout.EpisodeRunner` plays the plans, in this process (``workers`` 0, no Ray) or on
    ``workers`` Ray actors. A plan that depends on learning (see :meth:`SearchAgent.fixed_plan`) is made
    exactly when the agent has learned from ``episode - max_staleness`` episodes (the staleness bound,
    ``config.max_staleness``; by default ``workers - 1``, and 0 in-process or with one worker: right after
    the previous episode), whichever worker finishes first, so a seed, a number of workers and a bound give the same
    episodes every time, and one Ray worker gives the same episodes as in-process. Plans that do not depend
    on learning (random, warm-up) are made early for idle workers. Every checkpoint keeps the plans made
    and not yet learned from, so a resumed search continues exactly.

    Args:
        config: The search config (the env's checkpoint must be set; see :func:`resolve_checkpoint`).
        out: Search directory.
        tracker: An :class:`amc.service.tracking.RunTracker` or None (no MLflow).
        progress: Show progress (a bar on a terminal, else a line every few seconds; see :mod:`amc.progress`).
        ray: Play the episodes on Ray actors (None: unless ``workers`` is 0; True with 0 workers: one actor).
            False with workers plays them one at a time in this process, planned as on the workers (the
            same staleness bound).
        workspace: Your own model and data (:func:`amc.engine.workspace_for`) instead of the config's
            registry model, data set and checkpoint.
    """

    def __init__(
        self,
        config: SearchConfig,
        out: Path,
        tracker: Any = None,
        progress: bool = True,
        ray: bool | None = None,
        workspace: Any = None,
    ) -> None:
        from agents.parallel import build_env, rollout_workers
        from amc.engine import build_workspace

        self.config, self.out, self.tracker, self.progress = config, out, tracker, progress
        ws = workspace or build_workspace(config.env.model, config.env.data, config.env.checkpoint)
        if workspace is not None and config.worker_data == "path":
            raise ConfigError(
                "worker_data: path has each Ray worker load env.data itself, but this search was given a workspace "
                "of its own (its data cannot be loaded by name): use worker_data: object_store"
            )
        self.payload = {"ws": ws, "env_config": config.env, "progress": progress}
        self.env = build_env(self.payload)
        if config.env.target_metric == "latency":  # measured once, here: the workers reuse the table
            self.payload["cost_model"] = self.env.cost_model
        self.agent = create_agent(config.agent, self.env, config.ddpg, config.seed)
        if config.env.targets is not None and not self.agent.multi_target:
            raise ConfigError(
                f"agent {config.agent!r} searches one target at a time; env.targets (several in one search) needs "
                "ddpg or random, or run one search per target with env.target_ratio"
            )
        self.state = load_checkpoint(out, self.agent)
        self.state.fingerprint = self.env.fingerprint()
        self.total = 1 if self.agent.single_episode else config.episodes
        self.workers = 0 if self.agent.single_episode else rollout_workers(config.workers)
        """Ray rollout actors (0: in-process)."""
        self.uses_ray = self.workers > 0 if ray is None else ray
        self.max_staleness = config.staleness_bound(self.workers)
        """The staleness bound: plans that depend on learning are made this many episodes behind the learner."""
        self.pool: Any = None
        self._prefix: list[EpisodePlan] = []
        """The first episodes' plans: the uniform policy (``uniform_first``: of the target, or of each reported
        one), then with ``init_from`` the other search's best policies (:mod:`agents.warm_start`)."""
        if config.uniform_first and not self.agent.single_episode:
            targets = config.env.targets
            for target in [None] if targets is None else list(report_targets(targets)):
                self._prefix.append(uniform_plan(self.env, len(self._prefix), target))
        if config.init_from:
            self._start_warm()

    def _start_warm(self) -> None:
        """Takes over the other search's agent (before the first checkpoint) and plans its best policies."""
        from agents.warm_start import load_source, seed_plans, warm_start

        fresh = self.state.episode == 0  # checkpoints are written after episodes
        planned = max(self.state.plans, default=self.state.episode - 1) + 1
        if not fresh and planned >= len(self._prefix) + self.config.init_episodes:
            return  # taken over and played: the checkpoint holds the rest
        source = load_source(self.config.init_from)
        seeds = seed_plans(self.env, source.records, self.config.init_episodes, len(self._prefix), self.config.seed)
        self._prefix.extend(seeds)
        if fresh:
            taken = warm_start(self.agent, self.env, source, self.state.fingerprint)
            self.state.warm_start = {**taken, "seed_episodes": len(seeds)}

    def run(self, on_episode: Hook | None = None) -> SearchResult:
        """Runs the remaining episodes, then writes search.json, best_policy.json and the plots."""
        self._bar = Progress(
            self.total, f"search {self.config.agent}", "episode", initial=self.state.episode, enabled=self.progress
        )
        self._on_episode = on_episode
        if self.state.episode < self.total:
            self._run_episodes()
        self._bar.close()
        return self.finish()

    def _run_episodes(self) -> None:
        """Plans, plays and learns from the remaining episodes (see the class docstring for the schedule)."""
        if self.uses_ray:
            from agents.parallel import RolloutPool, worker_payload

            payload = worker_payload(self.payload, self.env, self.config.worker_data)
            self.pool = RolloutPool(payload, max(1, self.workers), self.config.ddpg, self.config.threads)
        else:
            self.pool = LocalRollouts(self.env, self.config.ddpg)
        self._queue: deque[int] = deque(sorted(self.state.plans))  # planned, not yet handed to a worker
        for episode in self._queue:
            self.agent.adopt(self.state.plans[episode])
        self._next_plan = max(self.state.plans, default=self.state.episode - 1) + 1
        finished: dict[int, EpisodeResult] = {}
        try:
            self._plan_due()
            while self.state.episode < self.total:
                self._hand_out()
                result = self.pool.next_result()
                finished[result.plan.episode] = result
                while self.state.episode in finished:
                    self._consume_result(finished.pop(self.state.episode))
                    self._plan_due()
        finally:
            self.pool.shutdown()

    def _plan_due(self) -> None:
        """Plans every episode that is at most ``max_staleness`` episodes ahead of the learner."""
        while self._next_plan < min(self.total, self.state.episode + self.max_staleness + 1):
            self._plan_next()

    def _hand_out(self) -> None:
        """Gives idle workers the planned episodes in episode order, then fixed plans made early."""
        while self.pool.free():
            if not self._queue:
                if self._next_plan >= self.total or not self._fixed(self._next_plan):
                    return
                self._plan_next()
            self.pool.submit(self.state.plans[self._queue.popleft()])

    def _fixed(self, episode: int) -> bool:
        """Whether the plan of ``episode`` does not depend on learning (it may be made early, for idle workers)."""
        return episode < len(self._prefix) or self.agent.fixed_plan(episode)

    def _plan_next(self) -> None:
        episode = self._next_plan
        if episode < len(self._prefix):  # the simplest answer is a candidate: never return less
            plan = self._prefix[episode]
            self.agent.adopt(plan)
        else:
            plan = self.agent.plan(episode)
            if not self.agent.fixed_plan(episode):
                plan = dataclasses.replace(plan, planned_after=self.state.episode)
        self.state.plans[episode] = plan
        self._queue.append(episode)
        self._next_plan += 1

    def _consume_result(self, result: EpisodeResult) -> None:
        stats = self.agent.end_episode(result.observations, result.actions, result.reward)
        del self.state.plans[result.plan.episode]
        self._consumed(result.record, stats)

    def _consumed(self, record: EpisodeRecord, stats: dict[str, float]) -> None:
        self.state.records.append(record)
        self.state.agent_stats[record.episode] = finite_stats(stats)
        self.state.episode += 1
        self._track(record, stats)
        if self._on_episode is not None:
            self._on_episode(record, stats)
        best = self.state.best
        self._bar.set_postfix(best_top1=f"{best.top1:.2%}", noise=_fmt(self.agent.noise), refresh=False)
        self._bar.update()
        if self.state.episode % self.config.checkpoint_every == 0 or self.state.episode == self.total:
            self.checkpoint()

    def checkpoint(self) -> None:
        save_checkpoint(self.out, self.agent, self.state)
        if self.tracker is not None:
            self.tracker.flush()

    def _track(self, record: EpisodeRecord, stats: dict[str, float]) -> None:
        if self.tracker is None:
            return
        metrics = episode_metrics(dataclasses.asdict(record), dataclasses.asdict(self.state.best))
        metrics.update(agent_metrics(stats))
        self.tracker.log_metrics(metrics, step=record.episode)

    def finish(self) -> SearchResult:
        """Evaluates the best policy on the test split and writes the outputs."""
        rollouts = None
        if self.uses_ray and self.pool is not None:
            pool = self.pool
            rollouts = {"workers": len(pool.actors), "lost": pool.lost, "restarts": pool.restarts}
        return write_outputs(self.env, self.state, self.config, self.out, self.tracker, self.max_staleness, rollouts)


EPISODE_METRICS = ("reward", "top1", "flops_ratio", "params_ratio")
BEST_METRICS = ("reward", "top1", "flops_ratio", "params_ratio", "latency_ratio")
"""Figures of the best episode so far, logged per episode as ``best_<name>`` (latency: with a latency estimate)."""


def episode_metrics(record: Mapping[str, Any], best: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one episode record (a dict of :class:`EpisodeRecord`) and the best so far.

    ``staleness`` (``episode - planned_after``) is logged for the episodes whose plan depended on learning.
    ``best_*`` are the best policy's so far (by reward): a chart of ``best_top1`` against ``best_flops_ratio``
    places each run at its best policy (``flops_ratio`` is the episode's own).
    """
    metrics = {k: record[k] for k in EPISODE_METRICS}
    metrics.update({f"best_{k}": best[k] for k in BEST_METRICS if best.get(k) is not None})
    if record.get("planned_after") is not None:
        metrics["staleness"] = record["episode"] - record["planned_after"]
    return metrics


def agent_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """The MLflow metrics of the agent's statistics of one episode (``agent_<name>``)."""
    return {f"agent_{k}": v for k, v in stats.items()}


def finite_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """The finite values of ``stats`` as floats (what MLflow keeps of them)."""
    out = {}
    for k, v in stats.items():
        if v is not None and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def search_metrics(
    records: Iterable[Mapping[str, Any]], agent_stats: Mapping[int, Mapping[str, float]]
) -> Iterator[tuple[int, dict[str, float]]]:
    """``(episode, metrics)`` of every record (dicts of :class:`EpisodeRecord`): what a live search logs."""
    for record, best in with_running_best(records):
        episode = int(record["episode"])
        yield episode, {**episode_metrics(record, best), **agent_metrics(agent_stats.get(episode, {}))}


def with_running_best(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Pairs each episode record with the best record (by reward) up to and including it."""
    best = None
    for record in records:
        best = record if best is None or record["reward"] > best["reward"] else best
        yield record, best


def _fmt(noise: float | None) -> str:
    return "-" if noise is None else f"{noise:.3f}"


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuses to overwrite a search; ``--resume`` needs one."""
    has_search = (out / "config.yaml").is_file()
    if resume and not has_search:
        raise ConfigError(f"{out} holds no search to resume (no config.yaml); start one with --config")
    if not resume and has_search:
        raise ConfigError(f"{out} already holds a search; continue it with --resume {out} or choose another --out")


def start_tracker(
    config: SearchConfig,
    state: SearchState,
    tracking_uri: str | None,
    out: Path,
    parent_run_id: str | None = None,
    artifact_root: str | None = None,
    staleness_bound: int | None = None,
) -> Any:
    """Opens the MLflow run of a search (a new one, or the resumed search's run).

    Args:
        config: The search config.
        state: The search's state (a resumed search carries its run id and store).
        tracking_uri: MLflow store of a new run (see :func:`amc.service.tracking.resolve_tracking_uri`).
        out: Search directory (tagged on the run).
        parent_run_id: Makes a new run the child of this one.
        artifact_root: Artifact root of the experiment if it is created now (see
            :func:`amc.service.tracking.experiment_artifact_location`).
        staleness_bound: The search's staleness bound, a param of a new run (``staleness_bound``; a resumed
            run keeps its first value, and the metric of the same name, logged at the end, the latest).
    """
    from amc.service.tracking import RunTracker, resolve_tracking_uri

    uri = state.tracking_uri or resolve_tracking_uri(tracking_uri)
    if state.run_id:
        tracker = RunTracker(uri, config.experiment, run_id=state.run_id)
        _relog_missing(tracker, state)
    else:
        name = f"{config.env.model}-{target_label(config.env)}-{config.agent}-s{config.seed}"
        tracker = RunTracker(
            uri,
            config.experiment,
            run_name=name,
            parent_run_id=parent_run_id,
            tags={"amc.agent": config.agent, "amc.model": config.env.model, "amc.out": str(out)},
            artifact_root=artifact_root,
        )
        tracker.log_params({**flatten(config), **run_params(staleness_bound)})
        state.run_id, state.tracking_uri = tracker.run_id, uri
    return tracker


def run_params(staleness_bound: int | None) -> dict[str, Any]:
    """The params of a search's run besides its config: the staleness bound in effect (when known)."""
    return {} if staleness_bound is None else {"staleness_bound": staleness_bound}


def _relog_missing(tracker: Any, state: SearchState) -> None:
    """Logs every metric of the checkpointed episodes that did not reach MLflow before an interruption.

    Each metric is checked on its own (an interrupted batch write may have stored some of an episode's
    metrics), so after a resume every episode has each of its metrics exactly once.
    """
    logged: dict[str, set[int]] = {}
    for episode, metrics in search_metrics((dataclasses.asdict(r) for r in state.records), state.agent_stats):
        missing = {}
        for key, value in metrics.items():
            if key not in logged:
                logged[key] = {m.step for m in tracker.client.get_metric_history(tracker.run_id, key)}
            if episode not in logged[key]:
                missing[key] = value
        if missing:
            tracker.log_metrics(missing, step=episode)
    tracker.flush()


def run_search(
    config: SearchConfig,
    out: Path,
    resume: bool = False,
    tracking_uri: str | None = None,
    track: bool = True,
    progress: bool = True,
    cache_dir: Path | None = None,
    parent_run_id: str | None = None,
    on_episode: Hook | None = None,
    address: str | None = None,
    artifact_root: str | None = None,
    workspace: Any = None,
) -> SearchResult:
    """Runs a search end to end (or resumes the one in ``out``).

    Searching your own model: ``run_search(config, out, workspace=amc.engine.workspace_for(model, train,
    val, test))`` writes exactly what ``amc search`` writes (pass the same workspace again to resume).

    Args:
        config: The search config (with ``resume``: None, or overrides of the stored one's episodes and workers).
        out: Search directory; nothing is written outside it except the baseline cache and the MLflow store.
        resume: Continue the interrupted search in ``out``.
        tracking_uri: MLflow store (see :func:`amc.service.tracking.resolve_tracking_uri`).
        track: Log to MLflow.
        progress: Show progress (bars on a terminal, else a line every few seconds; see :mod:`amc.progress`).
        cache_dir: Cache directory of the dense baseline (None: :func:`amc.baseline.default_cache_dir`).
        parent_run_id: Makes the MLflow run a child of this one.
        on_episode: Called after every episode with its record and the agent's statistics.
        address: Ray cluster to join (None: start Ray locally when more than one worker is used).
        artifact_root: Artifact root of the MLflow experiment if it is created now (None:
            ``$AMC_ARTIFACT_ROOT``, else next to a SQLite store; see :func:`amc.service.tracking.experiment_artifact_location`).
        workspace: Your own dense model and data (:func:`amc.engine.workspace_for`); the config's
            ``env.model``, ``env.data`` and ``env.checkpoint`` are then not used (``env.model`` is set to the
            workspace's name).
    """
    check_out_dir(out, resume)
    created = not out.exists()
    if resume:
        stored = stored_config(out)
        config = (
            stored.replace(episodes=max(config.episodes, stored.episodes), workers=config.workers)
            if config is not None
            else stored
        )
        save_yaml(config, out / "config.yaml")
    else:
        config, note = config.with_room_to_learn()
        if note:
            print(note, file=sys.stderr, flush=True)
        if workspace is None:
            config = resolve_checkpoint(config, cache_dir, progress)
        else:
            data = dataclasses.replace(config.env.data, name=workspace.data.name, root=None)
            config = config.replace(env=config.env.replace(model=workspace.spec.name, data=data, checkpoint=""))
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, out / "config.yaml")
    try:
        search = Search(config, out, None, progress, workspace=workspace)
        started_ray = _init_ray(address) if search.uses_ray else False
    except BaseException:
        if not resume:  # nothing ran (a budget out of reach, no cluster): the same command works once fixed
            (out / "config.yaml").unlink(missing_ok=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        raise
    if track:
        search.tracker = start_tracker(
            config, search.state, tracking_uri, out, parent_run_id, artifact_root, search.max_staleness
        )
    try:
        return search.run(on_episode)
    except BaseException:
        if search.tracker is not None:
            search.tracker.client.set_terminated(search.tracker.run_id, "KILLED")
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _init_ray(address: str | None) -> bool:
    """Joins the cluster at ``address`` (``auto`` or HOST:PORT) or starts Ray locally; True if started here."""
    from agents.cluster import init_ray

    return init_ray(address)


__all__ = [
    "EpisodeRecord",
    "Search",
    "SearchConfig",
    "SearchResult",
    "run_episode",
    "run_search",
    "save_yaml",
    "stored_config",
]
