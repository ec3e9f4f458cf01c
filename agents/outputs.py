"""What a finished search writes: search.json, best_policy.json, plots, and the MLflow artifacts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from agents.records import SearchConfig, SearchResult, SearchState, staleness_summary
from amc.files import write_json_atomic
from amc.service.plots import policy_bars, search_curves


def write_outputs(
    env: Any, state: SearchState, config: SearchConfig, out: Path, tracker: Any = None, max_staleness: int = 0
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
    """
    best = state.best
    test = env.evaluate_ratios(best.ratios, "test")
    uniform_ratios = env.uniform_ratios()
    uniform_ratio = next(iter(uniform_ratios.values()))
    uniform_val = env.evaluate_ratios(uniform_ratios, "val")
    uniform_test = env.evaluate_ratios(uniform_ratios, "test")
    uniform = {
        "ratio": uniform_ratio,
        "top1": uniform_val["top1"],
        "test_top1": uniform_test["top1"],
        "flops_ratio": uniform_val["flops_ratio"],
        "params_ratio": uniform_val["params_ratio"],
    }
    measured = {
        "top1": best.top1,
        "test_top1": test["top1"],
        "flops": test["flops"],
        "params": test["params"],
        "flops_ratio": best.flops_ratio,
        "params_ratio": best.params_ratio,
    }
    policy = env.to_policy(best.ratios, measured)
    policy.save(out / "best_policy.json")
    summary = {
        "target": {"metric": config.env.target_metric, "ratio": config.env.target_ratio},
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
        "staleness": staleness_summary(state.records, max_staleness),
        "episodes": [dataclasses.asdict(r) for r in state.records],
        "mlflow_run_id": state.run_id,
    }
    if config.env.target_metric == "latency":
        best_latency, dense_latency = latency_summary(env, best.ratios)
        summary["best"].update(best_latency)
        summary.update(dense_latency)
    write_json_atomic(out / "search.json", summary)
    policy_bars(
        out / "best_policy.png",
        best.ratios,
        uniform_ratio,
        f"{config.env.model}: best policy ({config.agent}), {config.env.target_metric} <= {config.env.target_ratio:g}",
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
    return SearchResult(out, best, test["top1"], uniform, state.run_id, state.episode, run_name)


def latency_summary(env: Any, ratios: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """After a latency-target search: the best policy's estimated and measured latency, and the dense model's.

    The physically pruned model and the dense model are measured with the settings the estimate's table
    was built with (``env.latency``). Returns the fields of search.json's ``best`` (``latency_ms_estimated``,
    ``latency_ms_measured``) and its top-level ones (``dense_latency_ms_measured``, ``dense_latency_ms_estimated``).
    """
    report = env.latency_report(ratios)
    best = {k: report[k] for k in ("latency_ms_estimated", "latency_ms_measured")}
    dense = {k: report[k] for k in ("dense_latency_ms_measured", "dense_latency_ms_estimated")}
    return best, dense


LATENCY_METRICS = {
    "best_latency_ms_estimated": ("best", "latency_ms_estimated"),
    "best_latency_ms_measured": ("best", "latency_ms_measured"),
    "dense_latency_ms_measured": (None, "dense_latency_ms_measured"),
}
"""MLflow metric -> where it sits in search.json (section, key), logged when the search had a latency target."""


ARTIFACTS = ("search.json", "best_policy.json", "config.yaml", "best_policy.png", "search_curves.png")


def log_final(tracker: Any, out: Path, summary: dict) -> None:
    """Logs a finished search's final metrics, artifacts and tags to its run, and ends the run."""
    best, uniform = summary["best"], summary["uniform"]
    metrics = {
        "best_test_top1": best["test_top1"],
        "uniform_top1": uniform["top1"],
        "uniform_test_top1": uniform["test_top1"],
    }
    for name, (section, key) in LATENCY_METRICS.items():
        where = summary[section] if section else summary
        if key in where:
            metrics[name] = where[key]
    staleness = summary.get("staleness")
    if staleness is not None:
        metrics.update({f"staleness_{k}": staleness[k] for k in ("bound", "max", "mean")})
    tracker.log_metrics(metrics, step=len(summary["episodes"]))
    for name in ARTIFACTS:
        tracker.log_artifact(out / name)
    tracker.set_tags({"amc.best_top1": f"{best['top1']:.4f}", "amc.best_test_top1": f"{best['test_top1']:.4f}"})
    tracker.finish()


__all__ = ["ARTIFACTS", "LATENCY_METRICS", "latency_summary", "log_final", "write_outputs"]
