"""What a finished search writes: search.json, best_policy.json, plots, and the MLflow artifacts."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.front_outputs import reports, target_outputs
from agents.records import EpisodeRecord, SearchConfig, SearchResult, SearchState, staleness_summary
from agents.selection import report
from amc.files import write_json_atomic
from amc.service.plots import policy_bars, search_curves


def write_outputs(
    env: Any,
    state: SearchState,
    config: SearchConfig,
    out: Path,
    tracker: Any = None,
    max_staleness: int = 0,
    rollouts: dict | None = None,
) -> SearchResult:
    """Evaluates the best policy on the test split, writes the search's files and logs them to ``tracker``.

    Args:
        env: The search's environment (a :class:`envs.ChannelPruningEnv`).
        state: The finished search's state.
        config: The search config.
        out: Search directory.
        tracker: An :class:`amc.service.tracking.RunTracker`, or None (no MLflow).
        max_staleness: The search's staleness bound (``config.max_staleness`` resolved; see
            :class:`agents.search.Search`), reported with the staleness observed.
        rollouts: What the Ray workers went through, written as search.json's ``rollouts`` (None: in-process):
            ``workers`` started, ``lost`` (each worker that died and the episode it was playing, run again) and
            ``restarts`` (replacements asked for).
    """
    per_target = reports(env, state.records, config) if config.env.targets is not None else None
    # best and best_policy.json: the first reported budget an episode meets (each meets the loosest), or the target
    headline = (
        next(r for _, r in per_target if r is not None)
        if per_target is not None
        else report(env, state.records, config.selection_top_k)
    )
    best, test, selection, uniform = headline.best, headline.test, headline.selection, headline.uniform()
    measured = {
        "top1": best.top1,
        "test_top1": test["top1"],
        "flops": test["flops"],
        "params": test["params"],
        "flops_ratio": best.flops_ratio,
        "params_ratio": best.params_ratio,
    }
    ratio = headline.budget if headline.budget is not None else env.config.target_ratio
    target = {"metric": config.env.target_metric, "ratio": ratio}
    if config.env.target_ms is not None:
        target["ms"] = config.env.target_ms
    summary = {
        "target": target,
        "agent": config.agent,
        "seed": config.seed,
        "model": config.env.model,
        "data": config.env.data.name,
        "best": {
            "episode": best.episode,
            "reward": best.reward,
            "policy": best.ratios,
            "top1": best.top1,
            "test_top1": test["top1"],
            "flops_ratio": best.flops_ratio,
            "params_ratio": best.params_ratio,
        },
        "uniform": uniform,
        "selection": None,
        "staleness": staleness_summary(state.records, max_staleness),
        "episodes": [dataclasses.asdict(r) for r in state.records],
        "mlflow_run_id": state.run_id,
    }
    if state.warm_start is not None:
        summary["warm_start"] = state.warm_start
    if rollouts is not None:
        summary["rollouts"] = rollouts
    if selection is not None:
        summary["best"]["selection_top1"] = measured["selection_top1"] = selection.selection_top1
        summary["selection"] = selection.summary(env.split_size("selection"))
    if per_target is not None:
        summary.update(target_outputs(env, state.records, per_target, out))
    if config.env.target_metric == "latency":
        summary.update(latency_summary(env, state.records, best.episode, summary["episodes"]))
        summary["best"].update(summary.pop("best_latency"))
        measured.update({k: summary["best"][k] for k in ("latency_ms_estimated", "latency_ms_measured")})
        measured["dense_latency_ms_measured"] = summary["dense_latency_ms_measured"]
    env.to_policy(best.ratios, measured, headline.budget).save(out / "best_policy.json")
    write_json_atomic(out / "search.json", summary)
    policy_bars(
        out / "best_policy.png",
        best.ratios,
        uniform["ratio"],
        f"{config.env.model}: best policy ({config.agent}), {config.env.target_metric} <= {target['ratio']:.3g}",
    )
    search_curves(
        out / "search_curves.png",
        [r.episode for r in state.records],
        [r.reward for r in state.records],
        [r.top1 for r in state.records],
        config.ddpg.warmup_episodes if config.agent == "ddpg" else 0,
    )
    if tracker is not None:
        log_final(tracker, out, summary)
    run_name = getattr(tracker, "run_name", None)
    uri = state.tracking_uri if state.run_id else None
    checkpoint = config.env.checkpoint or None
    return SearchResult(out, best, test["top1"], uniform, state.run_id, state.episode, run_name, uri, checkpoint)


def latency_front(records: Sequence[EpisodeRecord]) -> list[EpisodeRecord]:
    """The episodes no other episode beats on both search-val top-1 and estimated latency, by latency.

    Records without a latency estimate are left out; duplicates of a policy (same top-1 and latency) keep
    the first episode.
    """
    import moocore
    import numpy as np

    pool = [r for r in records if r.latency_ratio is not None]
    if not pool:
        return []
    points = np.array([[r.top1, r.latency_ratio] for r in pool], dtype=float)
    keep = moocore.is_nondominated(points, maximise=[True, False], keep_weakly=False)
    return sorted((r for r, k in zip(pool, keep) if k), key=lambda r: (r.latency_ratio, -r.top1, r.episode))


def latency_summary(
    env: Any, records: Sequence[EpisodeRecord], best_episode: int, episodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """After a latency-target search: estimated beside measured latency of the best and the Pareto policies.

    The best policy and every policy of :func:`latency_front` are applied physically and measured with
    the settings the estimate's table was built with (``env.latency``), in the same rounds as the dense
    model (:meth:`envs.ChannelPruningEnv.latency_reports`). The measured episodes of ``episodes`` (search.json's
    records) get ``latency_ms_measured``.

    Returns:
        search.json's fields: ``best_latency`` (``latency_ms_estimated``, ``latency_ms_measured``; merged into
        ``best`` by the caller), ``dense_latency_ms_measured``, ``dense_latency_ms_estimated``, ``pareto``
        (episode, top-1, FLOPs ratio, estimated and measured milliseconds of each front policy) and
        ``latency_estimate`` (median and largest |estimate - measured| / measured over the measured policies).
    """
    by_episode = {r.episode: r for r in records}
    front = latency_front(records)
    chosen = [best_episode] + [r.episode for r in front if r.episode != best_episode]
    reports, dense = env.latency_reports([by_episode[e].ratios for e in chosen])
    measured = dict(zip(chosen, reports))
    for record in episodes:
        if record["episode"] in measured:
            record["latency_ms_measured"] = measured[record["episode"]]["latency_ms_measured"]
    errors = [abs(r["latency_ms_estimated"] - r["latency_ms_measured"]) / r["latency_ms_measured"] for r in reports]
    pareto = [
        {
            "episode": r.episode,
            "top1": r.top1,
            "flops_ratio": r.flops_ratio,
            "latency_ms_estimated": measured[r.episode]["latency_ms_estimated"],
            "latency_ms_measured": measured[r.episode]["latency_ms_measured"],
        }
        for r in front
    ]
    check = getattr(env.cost_model.table, "check", None)
    return {
        "best_latency": measured[best_episode],
        **dense,
        "latency_table_check": check.to_dict() if check is not None else None,
        "pareto": pareto,
        "latency_estimate": {
            "policies": len(errors),
            "median_abs_err": statistics.median(errors),
            "max_abs_err": max(errors),
        },
    }


LATENCY_METRICS = {
    "best_latency_ms_estimated": ("best", "latency_ms_estimated"),
    "best_latency_ms_measured": ("best", "latency_ms_measured"),
    "dense_latency_ms_measured": (None, "dense_latency_ms_measured"),
    "latency_estimate_median_abs_err": ("latency_estimate", "median_abs_err"),
    "latency_estimate_max_abs_err": ("latency_estimate", "max_abs_err"),
}
"""MLflow metric -> where it sits in search.json (section, key), logged when the search had a latency target."""


ARTIFACTS = ("search.json", "best_policy.json", "config.yaml", "best_policy.png", "search_curves.png")


def final_best_metrics(summary: dict) -> dict[str, float]:
    """``best_top1``, ``best_flops_ratio``, ``best_params_ratio`` (and ``best_latency_ratio``) of the policy the
    search returns, logged at the last step so that a run's latest values are its returned policy's (a selection
    split or several budgets may return another episode than the running best by reward)."""
    best = summary["best"]
    record = next((r for r in summary["episodes"] if r["episode"] == best["episode"]), {})
    metrics = {f"best_{k}": best[k] for k in ("top1", "flops_ratio", "params_ratio")}
    if record.get("latency_ratio") is not None:
        metrics["best_latency_ratio"] = record["latency_ratio"]
    return metrics


def log_final(tracker: Any, out: Path, summary: dict) -> None:
    """Logs a finished search's final metrics, artifacts and tags to its run, and ends the run."""
    best, uniform = summary["best"], summary["uniform"]
    metrics = {
        **final_best_metrics(summary),
        "best_test_top1": best["test_top1"],
        "uniform_top1": uniform["top1"],
        "uniform_test_top1": uniform["test_top1"],
    }
    if "selection_top1" in best:
        metrics["best_selection_top1"] = best["selection_top1"]
    for name, (section, key) in LATENCY_METRICS.items():
        where = summary.get(section) or {} if section else summary
        if key in where:
            metrics[name] = where[key]
    if "pareto" in summary:
        metrics["pareto_policies"] = len(summary["pareto"])
    staleness = summary.get("staleness")
    if staleness is not None:
        metrics.update({f"staleness_{k}": staleness[k] for k in ("bound", "max", "mean")})
    met = [entry for entry in summary.get("targets", []) if entry["episode"] is not None]
    for entry in met:
        metrics[f"best_top1_t{entry['target']:g}"] = entry["top1"]
        metrics[f"best_test_top1_t{entry['target']:g}"] = entry["test_top1"]
    if "front" in summary:
        metrics["front_hypervolume"] = summary["front"]["hypervolume"]
    tracker.log_metrics(metrics, step=len(summary["episodes"]))
    for name in (*ARTIFACTS, *(entry["file"] for entry in met)):
        tracker.log_artifact(out / name)
    tracker.set_tags({"amc.best_top1": f"{best['top1']:.4f}", "amc.best_test_top1": f"{best['test_top1']:.4f}"})
    tracker.finish()


__all__ = ["ARTIFACTS", "LATENCY_METRICS", "latency_front", "latency_summary", "log_final", "write_outputs"]
