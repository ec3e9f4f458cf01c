"""The action wall: bounds each group's pruning so the target can always still be met.

AMC limits every action so that, with all groups not yet decided pruned as far as allowed
(``max_ratio``), the budget is still reachable. Here the bound is computed on integer kept-channel
counts with the exact cost model (a bound computed on a continuous approximation overshot a 0.5
FLOPs target by 2-3% in a prototype): for the current group, the wall finds the largest kept count
whose configuration (groups decided so far at their widths, this group at the count, later groups at
their fewest channels) meets the target. By induction every episode ends within budget, whatever the
agent does, provided the all-minimum configuration meets it, which is checked at construction.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from amc.errors import BudgetError, ConfigError
from amc.groups import PrunableGroup
from amc.pruning import group_round_to, kept_channels, kept_channels_many
from envs.costs import CostModel


@dataclass(frozen=True)
class Choice:
    """One group's decision: the kept channels, the pruning ratio that gives them, and whether the wall cut it.

    Attributes:
        kept: Channels kept (``kept_channels(channels, ratio, round_to) == kept``).
        ratio: Pruning ratio in ``[min_ratio, max_ratio]`` that reproduces ``kept``.
        walled: The agent asked for more channels than the budget allows; the wall lowered them.
    """

    kept: int
    ratio: float
    walled: bool


@dataclass(frozen=True)
class Choices:
    """The decisions of many episodes for one group: a :class:`Choice` per row, as arrays.

    Attributes:
        kept: ``(rows,)`` int64 channels kept.
        ratio: ``(rows,)`` float64 pruning ratios that reproduce them.
        walled: ``(rows,)`` whether the wall lowered the channels asked for.
    """

    kept: np.ndarray
    ratio: np.ndarray
    walled: np.ndarray


def _candidates(channels: int, min_ratio: float, max_ratio: float, round_to: int) -> tuple[list[int], list[float]]:
    """Every kept count a ratio in ``[min_ratio, max_ratio]`` can give, ascending, with a ratio for each.

    Each pair is checked by construction: the ratio is clamped into the range and mapped with
    :func:`kept_channels`, the rule the pruning itself uses.
    """
    fewest = kept_channels(channels, max_ratio)
    most = kept_channels(channels, min_ratio)
    kept: list[int] = []
    ratios: list[float] = []
    for unrounded in range(fewest, most + 1):
        ratio = min(max(1.0 - unrounded / channels, min_ratio), max_ratio)
        k = kept_channels(channels, ratio, round_to)
        if kept and k == kept[-1]:
            continue
        if kept and k < kept[-1]:  # kept_channels is monotone; guard the assumption
            raise ConfigError(f"kept_channels is not monotone for {channels} channels, round_to={round_to}")
        kept.append(k)
        ratios.append(ratio)
    return kept, ratios


def _all_candidates(
    groups: Sequence[PrunableGroup], min_ratio: float, max_ratio: float, round_to: int
) -> dict[str, tuple[list[int], list[float]]]:
    return {g.name: _candidates(g.channels, min_ratio, max_ratio, group_round_to(g, round_to)) for g in groups}


def fewest_widths(groups: Sequence[PrunableGroup], min_ratio: float, max_ratio: float, round_to: int) -> dict[str, int]:
    """The fewest channels each group can keep with these ratio bounds (what :attr:`BudgetWall.fewest` holds)."""
    return {name: kept[0] for name, (kept, _) in _all_candidates(groups, min_ratio, max_ratio, round_to).items()}


class BudgetWall:
    """Bounds each group's kept channels so the target stays reachable.

    Args:
        groups: The prunable groups in episode order.
        cost: The (monotone, exact) cost model of the target metric.
        target_ratio: Fraction of the dense cost the pruned model may keep.
        min_ratio: Smallest pruning ratio an action maps to.
        max_ratio: Largest pruning ratio an action maps to.
        round_to: Kept channel counts are multiples of this (or the whole group); a group touching grouped
            convs is rounded to :func:`amc.pruning.group_round_to` (a multiple of their ``groups`` too).

    Raises:
        BudgetError: when the target is not met even with every group at ``max_ratio``.
    """

    def __init__(
        self,
        groups: Sequence[PrunableGroup],
        cost: CostModel,
        target_ratio: float,
        min_ratio: float,
        max_ratio: float,
        round_to: int,
    ) -> None:
        self.groups = list(groups)
        self.cost = cost
        self.target_ratio = target_ratio
        self.round_to = round_to
        self.max_ratio = max_ratio
        self._options = _all_candidates(self.groups, min_ratio, max_ratio, round_to)
        self.fewest = {g.name: self._options[g.name][0][0] for g in self.groups}
        self._fewest_row = np.array([self.fewest[g.name] for g in self.groups], dtype=np.int64)
        self._option_arrays = {
            name: (np.array(kept, dtype=np.int64), np.array(ratios, dtype=np.float64))
            for name, (kept, ratios) in self._options.items()
        }
        self._check_reachable()

    def _check_reachable(self) -> None:
        floor = self.cost.ratio(self.fewest)
        if floor > self.target_ratio:
            raise BudgetError(
                f"{self.cost.metric or 'cost'} target {self.target_ratio} is out of reach: with every group pruned "
                f"at max_ratio={self.max_ratio} the model still keeps {floor:.4f} of its dense {self.cost.metric}; "
                "raise the target ratio or max_ratio"
            )

    def with_target(self, target_ratio: float) -> BudgetWall:
        """The same wall for another target (the kept-count options are shared, not recomputed).

        Raises:
            BudgetError: when ``target_ratio`` is out of reach even with every group at ``max_ratio``.
        """
        wall = copy.copy(self)
        wall.target_ratio = target_ratio
        wall._check_reachable()
        return wall

    def options(self, name: str) -> tuple[list[int], list[float]]:
        """Every kept count group ``name`` can take (ascending) and a pruning ratio that gives each."""
        kept, ratios = self._options[name]
        return list(kept), list(ratios)

    def meets(self, widths: Mapping[str, int]) -> bool:
        """Whether a full width configuration meets the target (the same test the wall uses)."""
        return self.cost.ratio(widths) <= self.target_ratio

    def choose(self, decided: Mapping[str, int], index: int, ratio: float) -> Choice:
        """The decision for group ``index`` when the agent asks for pruning ``ratio``.

        Args:
            decided: Kept channels of the groups before ``index``.
            index: Position of the group being decided.
            ratio: Requested pruning ratio, already within ``[min_ratio, max_ratio]``.
        """
        group = self.groups[index]
        wanted = kept_channels(group.channels, ratio, group_round_to(group, self.round_to))
        if self._feasible(decided, index, wanted):
            return Choice(wanted, ratio, False)
        kept, ratios = self._options[group.name]
        lo, hi = 0, bisect.bisect_left(kept, wanted) - 1  # kept[lo] is always feasible (induction)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._feasible(decided, index, kept[mid]):
                lo = mid
            else:
                hi = mid - 1
        return Choice(kept[lo], ratios[lo], True)

    def choose_many(self, decided: np.ndarray, index: int, ratios: np.ndarray) -> Choices:
        """:meth:`choose` for many episodes at once: row ``r`` of the result is ``choose`` of row ``r``.

        The same bisection runs on every walled row side by side, with the cost model's :meth:`CostModel.ratios`.

        Args:
            decided: ``(rows, index)`` kept channels of the groups before ``index``, one row per episode.
            index: Position of the group being decided.
            ratios: ``(rows,)`` requested pruning ratios, already within ``[min_ratio, max_ratio]``.
        """
        group = self.groups[index]
        ratios = np.asarray(ratios, dtype=np.float64)
        wanted = kept_channels_many(group.channels, ratios, group_round_to(group, self.round_to))
        widths = np.tile(self._fewest_row, (len(wanted), 1))
        widths[:, :index] = decided
        widths[:, index] = wanted
        feasible = self._meets_many(widths)
        kept_options, ratio_options = self._option_arrays[group.name]
        rows = np.flatnonzero(~feasible)
        lo = np.zeros(len(rows), dtype=np.int64)
        hi = np.searchsorted(kept_options, wanted[rows], side="left") - 1  # kept[lo] is always feasible (induction)
        while (active := np.flatnonzero(lo < hi)).size:
            mid = (lo[active] + hi[active] + 1) // 2
            trial = widths[rows[active]]
            trial[:, index] = kept_options[mid]
            met = self._meets_many(trial)
            lo[active] = np.where(met, mid, lo[active])
            hi[active] = np.where(met, hi[active], mid - 1)
        kept, chosen = wanted.copy(), ratios.copy()
        kept[rows], chosen[rows] = kept_options[lo], ratio_options[lo]
        return Choices(kept, chosen, ~feasible)

    def _meets_many(self, widths: np.ndarray) -> np.ndarray:
        """:meth:`meets` of each row of ``(rows, groups)`` widths (groups in episode order)."""
        return self.cost.ratios(widths) <= self.target_ratio

    def _feasible(self, decided: Mapping[str, int], index: int, kept: int) -> bool:
        widths = dict(self.fewest)
        widths.update(decided)
        widths[self.groups[index].name] = kept
        return self.meets(widths)
