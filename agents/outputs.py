"""What a finished search writes: search.json, best_policy.json, plots, and the MLflow artifacts."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from amc.plots import policy_bars, search_curves
from amc.files import write_json_atomic

if TYPE_CHECKING:
    from agents.search import Search, SearchResult


def write_outputs(search: "Search") -> "SearchResult":
    from agents.search import SearchResult

    env, state, config, out = search.env, search.state, search.config, search.out
    best = state.best
    test = env.evaluate_ratios(best.ratios, "test")
    uniform_ratios = env.uniform_ratios()
    uniform_ratio = next(iter(uniform_ratios.values()))
    uniform_val = env.evaluate_ratios(uniform_ratios, "val")
    uniform_test = env.evaluate_ratios(uniform_ratios, "test")
    uniform = {"ratio": uniform_ratio, "top1": uniform_val["top1"], "test_top1": uniform_test["top1"],
               "flops_ratio": uniform_val["flops_ratio"], "params_ratio": uniform_val["params_ratio"]}
    measured = {"top1": best.top1, "test_top1": test["top1"], "flops": test["flops"], "params": test["params"],
                "flops_ratio": best.flops_ratio, "params_ratio": best.params_ratio}
    policy = env.to_policy(best.ratios, measured)
    policy.save(out / "best_policy.json")
    summary = {
        "target": {"metric": config.env.target_metric, "ratio": config.env.target_ratio},
        "agent": config.agent, "seed": config.seed, "model": config.env.model, "data": config.env.data.name,
        "best": {"episode": best.episode, "reward": best.reward, "policy": best.ratios, "top1": best.top1,
                 "test_top1": test["top1"], "flops_ratio": best.flops_ratio, "params_ratio": best.params_ratio},
        "uniform": uniform,
        "episodes": [dataclasses.asdict(r) for r in state.records],
        "mlflow_run_id": state.run_id,
    }
    write_json_atomic(out / "search.json", summary)
    policy_bars(out / "best_policy.png", best.ratios, uniform_ratio,
                       f"{config.env.model}: best policy ({config.agent}), {config.env.target_metric} <= {config.env.target_ratio:g}")
    search_curves(out / "search_curves.png", [r.episode for r in state.records], [r.reward for r in state.records],
                           [r.top1 for r in state.records], config.ddpg.warmup_episodes if config.agent == "ddpg" else 0)
    if search.tracker is not None:
        _log_final(search.tracker, out, summary)
    return SearchResult(out, best, test["top1"], uniform, state.run_id, state.episode)


ARTIFACTS = ("search.json", "best_policy.json", "config.yaml", "best_policy.png", "search_curves.png")


def _log_final(tracker, out, summary: dict) -> None:
    best, uniform = summary["best"], summary["uniform"]
    tracker.log_metrics({"best_test_top1": best["test_top1"], "uniform_top1": uniform["top1"],
                         "uniform_test_top1": uniform["test_top1"]}, step=len(summary["episodes"]))
    for name in ARTIFACTS:
        tracker.log_artifact(out / name)
    tracker.set_tags({"amc.best_top1": f"{best['top1']:.4f}", "amc.best_test_top1": f"{best['test_top1']:.4f}"})
    tracker.finish()


def log_search_dir(uri: str, experiment: str, out, parent_run_id: str | None = None,
                   artifact_root: str | None = None) -> str:
    """Logs a finished search directory as one MLflow run (used by sweeps, whose trials do not track).

    The run gets what a tracked search logs: params, every episode's metrics (the agent's ``agent_*``
    statistics from the search's final checkpoint), the final metrics and the artifacts.

    Args:
        uri: Tracking URI.
        experiment: Experiment name.
        out: The finished search directory.
        parent_run_id: Makes the run a child of this one (the sweep's run).
        artifact_root: Artifact root of the experiment if it is created now.
    """
    import json

    from agents.search import SearchConfig, checkpointed_agent_stats, search_metrics
    from amc.config import flatten
    from amc.tracking import RunTracker

    config = SearchConfig.from_yaml(out / "config.yaml")
    summary = json.loads((out / "search.json").read_text())
    name = f"{config.env.model}-{config.env.target_metric}{config.env.target_ratio:g}-{config.agent}-s{config.seed}-{config.env.reward}"
    tracker = RunTracker(uri, experiment, run_name=name, parent_run_id=parent_run_id,
                         tags={"amc.agent": config.agent, "amc.model": config.env.model, "amc.out": str(out)},
                         artifact_root=artifact_root)
    tracker.log_params(flatten(config))
    for episode, metrics in search_metrics(summary["episodes"], checkpointed_agent_stats(out)):
        tracker.log_metrics(metrics, step=episode)
    _log_final(tracker, out, summary)
    return tracker.run_id
