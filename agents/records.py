"""The search's config and what it records: episodes, the state a checkpoint restores, the result.

Shared by the search loop (:mod:`agents.search`) and its outputs (:mod:`agents.outputs`), which import
this module and not each other.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.ddpg import DDPGConfig
from amc.config import load_yaml
from amc.errors import ConfigError
from amc.train import TrainConfig
from envs import EnvConfig


def target_label(env: EnvConfig) -> str:
    """The budget in a run name: ``flops0.5``, ``latency0.5``, or ``latency1.2ms`` for an absolute budget."""
    if env.target_ms is not None:
        return f"{env.target_metric}{env.target_ms:g}ms"
    return f"{env.target_metric}{env.target_ratio:g}"


def default_out_dir(config: SearchConfig) -> Path:
    """``runs/<model>-<data>-<budget>-<agent>-s<seed>``: named after what is searched, not the config file.

    The budget is :func:`target_label`'s, or ``<metric>-targets<R>-<R>...`` / ``<metric>-targets<low>to<high>``
    for several budgets; characters a directory name should not hold (``torchvision:resnet18``) become ``_``.
    """
    env = config.env
    targets = env.targets
    if targets is None:
        budget = target_label(env)
    elif isinstance(targets, tuple):
        budget = f"{env.target_metric}-targets" + "-".join(f"{t:g}" for t in targets)
    else:
        budget = f"{env.target_metric}-targets{targets.low:g}to{targets.high:g}"
    name = f"{env.model}-{env.data.name}-{budget}-{config.agent}-s{config.seed}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass(frozen=True)
class SearchConfig:
    """One search: the environment, the agent and its budget.

    Attributes:
        env: Model, data, checkpoint, target, ratio bounds, reward and evaluation settings.
        agent: A registered agent (:data:`agents.base.AGENTS`): ``ddpg``, or a baseline in the same harness:
            ``random``, ``uniform``, ``global``, ``sensitivity``, ``tpe``.
        episodes: Episodes in the search (warm-up included).
        seed: Seed of the agent.
        ddpg: DDPG settings (AMC's values by default).
        baseline: Training settings of the dense baseline, trained and cached when ``env.checkpoint`` is empty.
        checkpoint_every: Episodes between search checkpoints (and MLflow metric writes).
        experiment: MLflow experiment name.
        workers: Rollout workers: 0 runs the episodes in-process without Ray, N on N Ray actors (1: one actor,
            which gives exactly the in-process episodes), ``auto`` on one Ray actor per local CPU. With N
            workers, an episode whose plan depends on learning is planned N - 1 episodes behind the learner
            by default (``max_staleness``; in-process: right after the previous one), so a seed gives the
            same episodes for a given N.
        max_staleness: The staleness bound: an episode whose plan depends on learning is planned exactly when
            the learner has learned from all but ``max_staleness`` of the episodes before it (its staleness:
            ``episode - planned_after``), so a seed, a number of workers and a bound give the same episodes.
            A larger bound lets more plans queue ahead, so workers idle less while the learner trains, with
            plans from an older actor. ``auto``: workers - 1 (0 in-process and with one worker).
        threads: torch threads per rollout worker (0: local CPUs divided by workers).
        worker_data: How Ray rollout workers get the search-val images an episode evaluates on: ``object_store``
            (the learner's tensors, put into Ray's object store once) or ``path`` (each worker loads ``env.data``
            itself: a data set on disk, ``cifar10`` or ``imagefolder``, must be at ``env.data.root`` on every node;
            nothing of the data goes through the object store, and the first episode waits for no transfer).
            Both give the same episodes.
        uniform_first: The first episode of a searching agent (random, tpe, ddpg) plays the uniform policy,
            so the search's best is never below the uniform baseline on search-val (with reward ``acc``).
        selection_top_k: When the data has a selection split (``env.data.selection_size``), the search
            re-evaluates its this many best distinct policies (by reward) on it at the end and returns the best
            there instead of the best on search-val (:mod:`agents.selection`).
        init_from: Start from the agent of the ddpg search in this directory (its latest checkpoint): its networks,
            its episodes relabelled to this search's target in the replay, its best policies played first, and no
            warm-up (:mod:`agents.warm_start`). None: a cold start.
        init_episodes: With ``init_from``, how many of the other search's best distinct policies this search plays
            (bounded by its own budget wall) right after the uniform episode.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: str = "ddpg"
    episodes: int = 300
    seed: int = 0
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    checkpoint_every: int = 10
    experiment: str = "amc-search"
    workers: int | str = "auto"
    uniform_first: bool = True
    threads: int = 0
    worker_data: str = "object_store"
    max_staleness: int | str = "auto"
    selection_top_k: int = 10
    init_from: str | None = None
    init_episodes: int = 5

    def __post_init__(self) -> None:
        from agents.base import AGENTS

        AGENTS.get(self.agent)
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        if self.workers != "auto" and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0
        ):
            raise ConfigError(
                f"workers must be auto (one Ray actor per local CPU), 0 (in-process, no Ray) or N >= 1 Ray actors, "
                f"got {self.workers!r}"
            )
        if self.worker_data not in ("object_store", "path"):
            raise ConfigError(
                f"worker_data must be object_store (search-val tensors shipped through Ray's object store) or path "
                f"(each worker loads env.data itself, from the same path), got {self.worker_data!r}"
            )
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: local CPUs divided by workers), got {self.threads}")
        k = self.selection_top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(
                f"selection_top_k must be an integer >= 1 (policies re-ranked on the selection split), got {k!r}"
            )
        n = self.init_episodes
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(
                f"init_episodes must be an integer >= 0 (the other search's policies played first), got {n!r}"
            )
        if self.init_from is not None and self.agent != "ddpg":
            raise ConfigError(
                f"init_from starts a ddpg search from another one's agent; this search's agent is {self.agent!r}: "
                "set agent: ddpg or drop init_from"
            )
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        bound = self.max_staleness
        if bound != "auto" and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
            raise ConfigError(
                f"max_staleness must be an integer >= 0 or auto (workers - 1), got {bound!r}; 0 plans every "
                "learning episode after the learner has learned from all episodes before it"
            )

    def staleness_bound(self, workers: int) -> int:
        """``max_staleness`` with ``auto`` resolved for ``workers`` rollout workers (0: in-process)."""
        return max(0, workers - 1) if self.max_staleness == "auto" else int(self.max_staleness)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> SearchConfig:
        """Reads a search YAML, with ``dotted.key=value`` overrides (``amc search --set``) applied on top."""
        return load_yaml(cls, path, overrides)

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    def with_room_to_learn(self) -> tuple[SearchConfig, str | None]:
        """This config, with the DDPG warm-up scaled down when it would take more than half the episodes.

        A DDPG search that spends its budget in random warm-up never learns and is a random search under
        another name; the warm-up becomes a quarter of the episodes (AMC: 100 of 400) and the returned
        note says so. Other agents, and budgets with room, are returned unchanged with no note.
        """
        warmup = self.ddpg.warmup_episodes
        if self.agent != "ddpg" or self.init_from or warmup <= self.episodes // 2:  # a warm start has no warm-up
            return self, None
        scaled = self.episodes // 4
        note = (
            f"ddpg: warm-up scaled from {warmup} to {scaled} episodes so that {self.episodes - scaled} of "
            f"{self.episodes} episodes learn (set ddpg.warmup_episodes to choose; it must be at most half the episodes)"
        )
        return self.replace(ddpg=dataclasses.replace(self.ddpg, warmup_episodes=scaled)), note


@dataclass(frozen=True)
class EpisodeRecord:
    """What one episode found.

    Attributes:
        episode: Index of the episode in the search, from 0.
        reward: The episode's reward (``env.reward``).
        top1: Search-val top-1 of the pruned model.
        flops_ratio: FLOPs of the pruned model as a fraction of the dense model's.
        params_ratio: Parameters of the pruned model as a fraction of the dense model's.
        ratios: Pruning ratio (fraction of channels removed) per group name: the policy.
        planned_after: Episodes the agent had learned from when it planned this one (None: the plan did not
            depend on learning, e.g. random and warm-up episodes). ``episode - planned_after`` is the plan's
            staleness: 0 in-process, and the search's staleness bound (``max_staleness``) once the learner
            has learned from that many episodes (see :class:`agents.search.Search`).
        latency_ms: Estimated milliseconds per forward pass of the pruned model (latency targets only; None
            otherwise), from the search's latency table.
        latency_ratio: ``latency_ms`` as a fraction of the dense model's estimate (a Pareto objective).
        target: The episode's target ratio when the search had several (``env.targets``); None otherwise.
    """

    episode: int
    reward: float
    top1: float
    flops_ratio: float
    params_ratio: float
    ratios: dict[str, float]
    planned_after: int | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    target: float | None = None


@dataclass
class SearchState:
    """Everything a checkpoint restores besides the agent.

    Attributes:
        episode: Episodes finished.
        records: One record per finished episode, in episode order.
        run_id: The search's MLflow run (None: not tracked).
        tracking_uri: The MLflow store of ``run_id``.
        agent_stats: Episode -> the agent's statistics of it (logged as ``agent_*`` metrics; finite values only).
        plans: Episode -> the :class:`agents.base.EpisodePlan` made for it and not yet learned from (a
            resumed search runs these plans instead of planning those episodes again).
        warm_start: What a warm start took over (:func:`agents.warm_start.warm_start`; None: a cold start).
        fingerprint: The env's evaluation fingerprint (:meth:`envs.ChannelPruningEnv.fingerprint`): another search
            with the same one measured the same top-1 for the same widths (None: not known).
    """

    episode: int = 0
    records: list[EpisodeRecord] = field(default_factory=list)
    run_id: str | None = None
    tracking_uri: str | None = None
    agent_stats: dict[int, dict[str, float]] = field(default_factory=dict)
    plans: dict[int, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    warm_start: dict[str, Any] | None = None

    @property
    def best(self) -> EpisodeRecord | None:
        return max(self.records, key=lambda r: r.reward, default=None)


@dataclass(frozen=True)
class SearchResult:
    """Where the outputs are and what was found (``run_id`` / ``run_name``: the MLflow run, None when untracked;
    ``tracking_uri``: its store; ``checkpoint``: the dense model searched, None for your own workspace)."""

    out: Path
    best: EpisodeRecord
    best_test_top1: float
    uniform: dict[str, float]
    run_id: str | None
    episodes: int
    run_name: str | None = None
    tracking_uri: str | None = None
    checkpoint: str | None = None


Hook = Callable[[EpisodeRecord, dict[str, float]], None]


def staleness_summary(records: Iterable[EpisodeRecord], bound: int) -> dict[str, Any]:
    """search.json's ``staleness``: the bound, and the largest and mean staleness of the episodes whose plan
    depended on learning (``episode - planned_after``; ``max`` and ``mean`` are None when there were none)."""
    stale = [r.episode - r.planned_after for r in records if r.planned_after is not None]
    return {
        "bound": bound,
        "max": max(stale, default=None),
        "mean": sum(stale) / len(stale) if stale else None,
        "episodes": len(stale),
    }


__all__ = ["EpisodeRecord", "Hook", "SearchConfig", "SearchResult", "SearchState", "staleness_summary"]
