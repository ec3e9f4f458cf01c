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
