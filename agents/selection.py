"""Selection that generalises: the search's best policies re-ranked on a split the search never saw.

A search keeps the policy of the highest search-val reward among hundreds of evaluations on a few hundred
images: the maximum of many noisy measurements, which overstates its accuracy and is often not the best
policy (the winner's curse). When the data has a selection split (``data.selection_size``, or
``workspace_for(..., selection=...)``), the search re-evaluates its ``top_k`` best distinct policies by reward on
it at the end and returns the best there; search.json keeps both figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.records import EpisodeRecord

SPLIT = "selection"


@dataclass(frozen=True)
class Candidate:
    """One re-evaluated policy: its episode, search-val top-1 and reward, and top-1 on the selection split."""

    episode: int
    top1: float
    reward: float
    selection_top1: float


@dataclass(frozen=True)
class Selection:
    """The outcome of the re-ranking.

    Attributes:
        chosen: The record returned as the search's best (the highest selection top-1; ties: higher reward).
        by_reward: The record of the highest reward (the best without a selection split).
        candidates: Every re-evaluated policy, in reward order.
    """

    chosen: EpisodeRecord
    by_reward: EpisodeRecord
    candidates: tuple[Candidate, ...]

    @property
    def selection_top1(self) -> float:
        return next(c.selection_top1 for c in self.candidates if c.episode == self.chosen.episode)

    def summary(self, size: int) -> dict:
        """search.json's ``selection`` section (``size``: images in the selection split)."""
        return {
            "split_size": size,
            "top_k": len(self.candidates),
            "chosen_episode": self.chosen.episode,
            "best_reward_episode": self.by_reward.episode,
            "candidates": [vars(c) for c in self.candidates],
        }


def top_distinct(records: Sequence[EpisodeRecord], k: int) -> list[EpisodeRecord]:
    """The ``k`` best records by reward (first episode of equals), one per distinct policy."""
    seen: set[tuple] = set()
    chosen = []
    for record in sorted(records, key=lambda r: (-r.reward, r.episode)):
        key = tuple(sorted(record.ratios.items()))
        if key not in seen:
            seen.add(key)
            chosen.append(record)
            if len(chosen) == k:
                break
    return chosen


def select(env, records: Sequence[EpisodeRecord], top_k: int) -> Selection | None:
    """Re-ranks the ``top_k`` best distinct policies of ``records`` on ``env``'s selection split.

    Every record is an episode the budget wall let through, so every candidate meets the target.

    Args:
        env: The search's :class:`envs.ChannelPruningEnv`.
        records: The search's episodes.
        top_k: How many policies to re-evaluate.

    Returns:
        The selection, or None when the env has no selection split or there are no records.
    """
    if not records or not env.has_split(SPLIT):
        return None
    ranked = top_distinct(records, top_k)
    candidates = tuple(
        Candidate(r.episode, r.top1, r.reward, env.evaluate_ratios(r.ratios, SPLIT)["top1"]) for r in ranked
    )
    best = max(range(len(ranked)), key=lambda i: (candidates[i].selection_top1, candidates[i].reward, -i))
    return Selection(ranked[best], ranked[0], candidates)


def cost_ratio(record: EpisodeRecord, metric: str) -> float:
    """The record's cost as a fraction of the dense model's, in the search's target metric."""
    return record.params_ratio if metric == "params" else record.flops_ratio


def within(records: Sequence[EpisodeRecord], metric: str, budget: float) -> list[EpisodeRecord]:
    """The records whose cost meets ``budget``."""
    return [r for r in records if cost_ratio(r, metric) <= budget + 1e-12]


@dataclass(frozen=True)
class Reported:
    """The policy a search reports for a budget, and the uniform policy of that budget.

    Attributes:
        budget: The budget (None: the search's one target).
        best: The reported episode: the best by reward, or on the selection split when there is one.
        selection: The re-ranking on the selection split (None without one).
        candidates: Episodes that met the budget.
        test: ``best`` evaluated on the test split (:meth:`envs.ChannelPruningEnv.evaluate_ratios`).
        uniform_ratio: The uniform policy's ratio for the budget.
        uniform_val: The uniform policy on search-val.
        uniform_test: The uniform policy on test.
    """

    budget: float | None
    best: EpisodeRecord
    selection: Selection | None
    candidates: int
    test: dict[str, float]
    uniform_ratio: float
    uniform_val: dict[str, float]
    uniform_test: dict[str, float]

    def uniform(self) -> dict[str, float]:
        """search.json's ``uniform``: ratio, search-val and test top-1, FLOPs and params ratios."""
        return {
            "ratio": self.uniform_ratio,
            "top1": self.uniform_val["top1"],
            "test_top1": self.uniform_test["top1"],
            "flops_ratio": self.uniform_val["flops_ratio"],
            "params_ratio": self.uniform_val["params_ratio"],
        }


def report(
    env: Any, records: Sequence[EpisodeRecord], top_k: int, budget: float | None = None, metric: str = "flops"
) -> Reported | None:
    """The policy to report among ``records`` for ``budget``, evaluated on test beside that budget's uniform policy.

    Args:
        env: The search's :class:`envs.ChannelPruningEnv`.
        records: The search's episodes.
        top_k: Policies re-ranked on the selection split when the env has one.
        budget: Only episodes whose ``metric`` ratio meets it (None: every episode, the env's own target).
        metric: The budgeted metric (``flops`` or ``params``).

    Returns:
        The report, or None when no episode meets ``budget``.
    """
    candidates = list(records) if budget is None else within(records, metric, budget)
    if not candidates:
        return None
    selection = select(env, candidates, top_k)
    best = selection.chosen if selection is not None else max(candidates, key=lambda r: r.reward)
    uniform = env.uniform_ratios(budget)
    return Reported(
        budget,
        best,
        selection,
        len(candidates),
        env.evaluate_ratios(best.ratios, "test"),
        next(iter(uniform.values())),
        env.evaluate_ratios(uniform, "val"),
        env.evaluate_ratios(uniform, "test"),
    )
