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
from agents.selection import Reported, report
from envs.targets import TargetRange, Targets

RANGE_POINTS = 5


def report_targets(targets: Targets) -> list[float]:
    """The budgets a multi-target search reports: the listed ones in order, or evenly spaced across a range."""
    if isinstance(targets, TargetRange):
        return [float(t) for t in np.linspace(targets.low, targets.high, RANGE_POINTS)]
    return list(targets)


def policy_file(target: float) -> str:
    """The file name of the best policy for ``target``: ``best_policy_t0.2.json``."""
    return f"best_policy_t{target:g}.json"


def reports(env: Any, records: Sequence[EpisodeRecord], config: SearchConfig) -> list[tuple[float, Reported | None]]:
    """The reported policy of every reported budget (None where no episode meets it)."""
    budgets = report_targets(config.env.targets)
    metric, top_k = config.env.target_metric, config.selection_top_k
    return [(budget, report(env, records, top_k, budget, metric)) for budget in budgets]


def target_entry(budget: float, reported: Reported | None) -> dict[str, Any]:
    """search.json's entry of one budget in ``targets``."""
    if reported is None:  # possible without uniform_first: no episode was drawn this tight
        return {"target": budget, "episode": None, "candidates": 0, "file": None}
    best = reported.best
    entry = {
        "target": budget,
        "episode": best.episode,
        "episode_target": best.target,
        "reward": best.reward,
        "top1": best.top1,
        "test_top1": reported.test["top1"],
        "flops_ratio": best.flops_ratio,
        "params_ratio": best.params_ratio,
        "policy": best.ratios,
        "candidates": reported.candidates,
        "uniform": {k: reported.uniform()[k] for k in ("ratio", "top1", "test_top1")},
        "file": policy_file(budget),
    }
    if reported.selection is not None:
        entry["selection_top1"] = reported.selection.selection_top1
    return entry


def target_outputs(
    env: Any, records: Sequence[EpisodeRecord], reported: Sequence[tuple[float, Reported | None]], out: Path
) -> dict[str, Any]:
    """search.json's ``targets`` (one entry per reported budget, its policy file written) and ``front``."""
    entries = [target_entry(budget, r) for budget, r in reported]
    for entry in entries:
        if entry["episode"] is not None:
            measured = {k: entry[k] for k in ("top1", "test_top1", "flops_ratio")}
            env.to_policy(entry["policy"], measured, entry["target"]).save(out / entry["file"])
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
