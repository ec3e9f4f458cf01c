"""Sweeps of searches on Ray Tune: a grid of targets x seeds x rewards (x agents), one trial per search.

Each trial runs one search (without tracking) and reserves CPU bundles for its own rollout workers (with
``workers: auto`` each trial runs in-process: Tune runs the trials in parallel).
The driver is the only MLflow writer: when the sweep ends it creates a parent run for the sweep and
one child run per trial (config as params, per-episode metrics, the search's artifacts), so a SQLite
store is never written concurrently.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.checkpoints import checkpointed_agent_stats
from agents.outputs import log_final
from agents.records import target_label
from agents.search import (
    SearchConfig,
    resolve_checkpoint,
    run_params,
    run_search,
    search_metrics,
)
from amc.config import flatten, load_yaml
from amc.errors import ConfigError


@dataclass(frozen=True)
class SweepConfig:
    """A grid of searches.

    Attributes:
        base: Search config YAML the trials start from (relative paths: to the sweep file).
        name: Sweep name (the MLflow parent run is named ``sweep-<name>``, then its start time and short id).
        grid: Dotted SearchConfig field -> values; every combination is one trial
            (e.g. ``env.target_ratio: [0.3, 0.5]``, ``seed: [0, 1]``, ``env.reward: [acc, acc_log_flops]``).
        overrides: Dotted field -> value applied to every trial (e.g. ``episodes: 60``).
        max_concurrent: Trials at once (0: as many as the cluster's CPUs allow).
    """

    base: str
    name: str = "sweep"
    grid: dict[str, list] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int = 0

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("a sweep needs a non-empty grid of field: [values]")
        for key, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"grid entry {key!r} must be a non-empty list of values")


def with_field(config: Any, dotted: str, value: Any) -> Any:
    """A copy of a nested frozen dataclass with ``a.b.c`` set to ``value``."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(config)}
    if head not in names:
        raise ConfigError(f"unknown field {dotted!r}: {type(config).__name__} has {', '.join(sorted(names))}")
    if rest:
        return dataclasses.replace(config, **{head: with_field(getattr(config, head), rest, value)})
    return dataclasses.replace(config, **{head: value})


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[SweepConfig, SearchConfig]:
    """Reads a sweep file and its base search config (with ``dotted.key=value`` ``overrides``, then the
    sweep's fixed overrides applied)."""
    sweep = load_yaml(SweepConfig, path)
    base_path = Path(sweep.base)
    if not base_path.is_absolute():
        base_path = Path(path).parent / base_path
    base = SearchConfig.from_yaml(base_path, overrides)
    for key, value in sweep.overrides.items():
        base = with_field(base, key, value)
    for key, values in sweep.grid.items():
        with_field(base, key, values[0])  # validates the key before anything starts
    return sweep, base


def _trial(params: dict[str, Any], base: SearchConfig, root: str) -> None:
    """One Tune trial: one search, reported once at the end."""
    import ray
    from ray import tune

    config = base
    for key, value in params.items():
        config = with_field(config, key, value)
    tag = "-".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(params.items()))
    out = Path(root) / tag
    result = run_search(config, out, track=False, progress=False)
    tune.report(
        {
            "best_top1": result.best.top1,
            "best_test_top1": result.best_test_top1,
            "best_flops_ratio": result.best.flops_ratio,
            "episodes": result.episodes,
            "out": str(out),
            "node": ray.get_runtime_context().get_node_id(),
        }
    )


def run_sweep(
    sweep: SweepConfig,
    base: SearchConfig,
    out: Path,
    tracking_uri: str | None = None,
    address: str | None = None,
    cache_dir: Path | None = None,
    artifact_root: str | None = None,
) -> list[dict[str, Any]]:
    """Runs every trial of the grid on Ray Tune, then logs the sweep to MLflow; returns the trials' results.

    Args:
        sweep: The grid.
        base: The search config every trial starts from.
        out: Sweep directory (``trials/`` and ``tune/`` inside).
        tracking_uri: MLflow store (see :func:`amc.service.tracking.resolve_tracking_uri`).
        address: Ray cluster to join (None: start Ray locally).
        cache_dir: Cache directory of the shared dense baseline (None: :func:`amc.baseline.default_cache_dir`).
        artifact_root: Artifact root of the MLflow experiment if it is created now.
    """
    from ray import tune

    from agents.cluster import init_ray
    from agents.parallel import require_ray

    ray = require_ray()
    base = resolve_checkpoint(base, cache_dir)  # train the shared baseline once, before the trials
    base = dataclasses.replace(base, env=base.env.replace(checkpoint=str(Path(base.env.checkpoint).resolve())))
    out = out.resolve()
    if base.workers == "auto":  # Tune runs the trials in parallel: each one plays its episodes in-process
        base = base.replace(workers=0)
    started = init_ray(address)
    try:
        bundles = [{"CPU": 1}] * (1 + base.workers)  # the trial's driver and its rollout actors
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base, root=str(out / "trials")), tune.PlacementGroupFactory(bundles)
        )
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune.grid_search(list(v)) for k, v in sweep.grid.items()},
            tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent or None),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str(out / "tune"), verbose=1),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    results = [
        {
            **r.config,
            **{k: r.metrics.get(k) for k in ("best_top1", "best_test_top1", "best_flops_ratio", "out", "node")},
            "error": str(r.error) if r.error else None,
        }
        for r in grid
    ]
    failed = [r for r in results if r["error"]]
    log_sweep(sweep, base, results, tracking_uri, artifact_root)
    if failed:
        raise ConfigError(f"{len(failed)} of {len(results)} trials failed; first error: {failed[0]['error'][:300]}")
    return results


def log_sweep(
    sweep: SweepConfig,
    base: SearchConfig,
    results: list[dict[str, Any]],
    tracking_uri: str | None,
    artifact_root: str | None = None,
) -> str:
    """The single MLflow writer: a parent run for the sweep, one child run per finished trial."""
    from amc.service.tracking import RunTracker, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    parent = RunTracker(
        uri, base.experiment, run_name=f"sweep-{sweep.name}", tags={"amc.kind": "sweep"}, artifact_root=artifact_root
    )
    parent.log_params({"sweep.name": sweep.name, **{f"grid.{k}": json.dumps(v) for k, v in sweep.grid.items()}})
    for r in results:
        if r.get("out") and not r["error"]:
            log_search_dir(
                uri,
                base.experiment,
                Path(r["out"]),
                parent_run_id=parent.run_id,
                artifact_root=artifact_root,
                tags={"amc.ray_node": r["node"]} if r.get("node") else None,
            )
    best = max((r["best_top1"] for r in results if r.get("best_top1") is not None), default=None)
    if best is not None:
        parent.log_metrics({"best_top1": best}, step=0)
    parent.finish()
    return parent.run_id


def log_search_dir(
    uri: str,
    experiment: str,
    out: Path,
    parent_run_id: str | None = None,
    artifact_root: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Logs a finished search directory as one MLflow run (used by sweeps, whose trials do not track).

    The run gets what a tracked search logs: params, every episode's metrics (the agent's ``agent_*``
    statistics from the search's final checkpoint), the final metrics and the artifacts.

    Args:
        uri: Tracking URI.
        experiment: Experiment name.
        out: The finished search directory.
        parent_run_id: Makes the run a child of this one (the sweep's run).
        artifact_root: Artifact root of the experiment if it is created now.
        tags: More tags of the run (a sweep's trials: ``amc.ray_node``, the Ray node that ran the search).
    """
    from amc.service.tracking import RunTracker

    config = SearchConfig.from_yaml(out / "config.yaml")
    summary = json.loads((out / "search.json").read_text())
    name = f"{config.env.model}-{target_label(config.env)}-{config.agent}-s{config.seed}-{config.env.reward}"
    tracker = RunTracker(
        uri,
        experiment,
        run_name=name,
        parent_run_id=parent_run_id,
        tags={"amc.agent": config.agent, "amc.model": config.env.model, "amc.out": str(out), **(tags or {})},
        artifact_root=artifact_root,
    )
    tracker.log_params({**flatten(config), **run_params(summary.get("staleness", {}).get("bound"))})
    for episode, metrics in search_metrics(summary["episodes"], checkpointed_agent_stats(out)):
        tracker.log_metrics(metrics, step=episode)
    log_final(tracker, out, summary)
    return tracker.run_id
