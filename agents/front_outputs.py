"""What a search over several targets (``env.targets``) adds to its outputs: the best policy per target and the
Pareto front of every episode.

Every episode meets its own target, so for a budget ``t`` every episode whose cost is at most ``t`` is a
candidate, whatever target it was drawn for. The targets reported are the listed ones, or five evenly spaced
budgets across a range ``{low, high}``; with ``uniform_first`` the search's first episodes play the uniform
policy of each of them, so each has a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.records import EpisodeRecord, SearchConfig
from agents.selection import select
from envs.targets import TargetRange, Targets

RANGE_POINTS = 5


def headline_target(records: Sequence[EpisodeRecord], targets: Targets, metric: str) -> float:
    """The budget of search.json's ``best`` and ``best_policy.json``: the first reported one any episode meets."""
    budgets = report_targets(targets)
    return next((t for t in budgets if within(records, metric, t)), max(budgets))


def report_targets(targets: Targets) -> list[float]:
    """The budgets a multi-target search reports: the listed ones in order, or evenly spaced across a range."""
    if isinstance(targets, TargetRange):
        return [float(t) for t in np.linspace(targets.low, targets.high, RANGE_POINTS)]
    return list(targets)


def cost_ratio(record: EpisodeRecord, metric: str) -> float:
    """The record's cost as a fraction of the dense model's, in the search's target metric."""
    return record.params_ratio if metric == "params" else record.flops_ratio


def within(records: Sequence[EpisodeRecord], metric: str, budget: float) -> list[EpisodeRecord]:
    """The records whose cost meets ``budget``."""
    return [r for r in records if cost_ratio(r, metric) <= budget + 1e-12]


def policy_file(target: float) -> str:
    """The file name of the best policy for ``target``: ``best_policy_t0.2.json``."""
    return f"best_policy_t{target:g}.json"


def best_for(env: Any, records: Sequence[EpisodeRecord], config: SearchConfig, budget: float) -> dict[str, Any]:
    """The best policy for ``budget`` (by reward, or by the selection split when there is one) and the uniform
    policy of that budget, each on search-val and test."""
    candidates = within(records, config.env.target_metric, budget)
    if not candidates:  # possible without uniform_first: no episode was drawn this tight
        return {"target": budget, "episode": None, "candidates": 0, "file": None}
    selection = select(env, candidates, config.selection_top_k)
    best = selection.chosen if selection is not None else max(candidates, key=lambda r: r.reward)
    uniform_ratios = env.uniform_ratios(budget)
    entry = {
        "target": budget,
        "episode": best.episode,
        "episode_target": best.target,
        "reward": best.reward,
        "top1": best.top1,
        "test_top1": env.evaluate_ratios(best.ratios, "test")["top1"],
        "flops_ratio": best.flops_ratio,
        "params_ratio": best.params_ratio,
        "policy": best.ratios,
        "candidates": len(candidates),
        "uniform": {
            "ratio": next(iter(uniform_ratios.values())),
            "top1": env.evaluate_ratios(uniform_ratios, "val")["top1"],
            "test_top1": env.evaluate_ratios(uniform_ratios, "test")["top1"],
        },
        "file": policy_file(budget),
    }
    if selection is not None:
        entry["selection_top1"] = selection.selection_top1
    return entry


def target_outputs(env: Any, records: Sequence[EpisodeRecord], config: SearchConfig, out: Path) -> dict[str, Any]:
    """search.json's ``targets`` (one entry per reported budget, its policy file written) and ``front``."""
    entries = []
    for budget in report_targets(config.env.targets):
        entry = best_for(env, records, config, budget)
        entries.append(entry)
        if entry["episode"] is None:
            continue
        measured = {"top1": entry["top1"], "test_top1": entry["test_top1"], "flops_ratio": entry["flops_ratio"]}
        env.to_policy(entry["policy"], measured, budget).save(out / entry["file"])
    return {"targets": entries, "front": episode_front(records)}


def episode_front(records: Sequence[EpisodeRecord]) -> dict[str, Any]:
    """The Pareto front of every episode (search-val top-1 against FLOPs and params ratios) and its hypervolume
    (the one ``amc pareto`` computes, :mod:`amc.service.front`)."""
    from amc.service.front import Candidate, pareto_front

    pool = [Candidate("", "", r.episode, r.top1, r.flops_ratio, r.params_ratio, ratios=r.ratios) for r in records]
    front = pareto_front(pool)
    targets = {r.episode: r.target for r in records}
    return {
        "hypervolume": front.hypervolume,
        "objectives": list(front.objectives),
        "policies": [
            {
                "episode": c.episode,
                "target": targets[c.episode],
                "top1": c.top1,
                "flops_ratio": c.flops_ratio,
                "params_ratio": c.params_ratio,
            }
            for c in front.front
        ],
    }
