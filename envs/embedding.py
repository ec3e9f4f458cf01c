"""AMC's layer embedding: the state the agent sees before deciding each group.

Eleven features per group (He et al. 2018, Sec. 3.2)::

    0 index      1 kind (conv / depthwise / linear)   2 in channels    3 out channels (the group's)
    4 spatial    5 stride                             6 kernel         7 the group's dense FLOPs
    8 FLOPs reduced so far   9 FLOPs still to decide  10 previous action (pruning ratio)

Features 0-7 are static and min-max normalised over the groups (a feature equal for every group is 0).
Features 8-10 change during the episode and are fractions in [0, 1]: the exact FLOPs removed by the
groups decided so far over the dense FLOPs, the dense FLOPs of the groups after the current one over
those of all groups, and the pruning ratio applied to the previous group (0 at the first group).

With ``history`` (``env.observe_history``, the default), one more feature per group follows: the fraction of
that group's channels removed so far (0 for the groups not decided yet; the index feature tells them apart).
AMC's eleven features summarise the past in two numbers, so a critic ``Q(s_t, a_t)`` cannot tell two
episodes with the same FLOPs reduced apart; with the history, the last step's state and action are the whole
policy, and the critic's value there is a model of the episode's reward (see :mod:`agents.proposals`).

With several targets in one search (``env.targets``), the episode's target ratio is the last feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from amc.groups import PrunableGroup

FEATURES = (
    "index",
    "kind",
    "in_channels",
    "out_channels",
    "spatial",
    "stride",
    "kernel",
    "flops",
    "reduced",
    "rest",
    "previous_action",
)
KIND_CODES = {"conv": 0.0, "depthwise": 1.0, "linear": 2.0}


def static_features(groups: Sequence[PrunableGroup]) -> np.ndarray:
    """The min-max normalised static features (columns 0-7), one row per group, float64."""
    raw = np.array(
        [
            [g.index, KIND_CODES.get(g.kind, 0.0), g.in_channels, g.channels, g.spatial, g.stride, g.kernel, g.flops]
            for g in groups
        ],
        dtype=np.float64,
    )
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (raw - lo) / span


class LayerEmbedding:
    """Builds observations: a group's static row plus the episode's dynamic features.

    Args:
        groups: The prunable groups in episode order.
    """

    def __init__(self, groups: Sequence[PrunableGroup], history: bool = False, target: bool = False) -> None:
        self._static = static_features(groups)
        self._names = [g.name for g in groups]
        self._channels = np.array([g.channels for g in groups], dtype=np.float64)
        self.history = history
        self.target = target
        flops = np.array([g.flops for g in groups], dtype=np.float64)
        total = flops.sum() or 1.0
        # rest[i]: dense FLOPs of the groups after group i, over those of all groups
        self._rest = np.concatenate([np.cumsum(flops[::-1])[::-1][1:], [0.0]]) / total

    @property
    def size(self) -> int:
        """Features per observation: the eleven of AMC, plus one per group with ``history``, plus the target."""
        return len(FEATURES) + (len(self._names) if self.history else 0) + int(self.target)

    def observation(
        self,
        index: int,
        reduced: float,
        previous_action: float,
        decided: Mapping[str, int] | None = None,
        target: float = 0.0,
    ) -> np.ndarray:
        """A fresh float32 observation for group ``index``.

        Args:
            index: Position of the group about to be decided (the last one at episode end).
            reduced: Fraction of the dense FLOPs removed by the groups decided so far.
            previous_action: Pruning ratio applied to the previous group.
            decided: Kept channels of the groups decided so far, by name (used with ``history`` only).
            target: The episode's target ratio (the last feature, with ``target`` only).
        """
        dynamic = np.array([reduced, self._rest[index], previous_action], dtype=np.float64)
        parts = [self._static[index], np.clip(dynamic, 0.0, 1.0)]
        if self.history:
            kept = np.array([(decided or {}).get(name, c) for name, c in zip(self._names, self._channels)])
            parts.append(np.clip(1.0 - kept / self._channels, 0.0, 1.0))
        if self.target:
            parts.append(np.array([min(max(target, 0.0), 1.0)]))
        return np.concatenate(parts).astype(np.float32)

    def observations(
        self, index: int, reduced: np.ndarray, previous_action: np.ndarray, widths: np.ndarray, target: float = 0.0
    ) -> np.ndarray:
        """:meth:`observation` of many episodes at group ``index``: row ``r`` is the observation of row ``r``'s
        arguments, with the same float32 values.

        Args:
            index: Position of the group about to be decided (the last one at episode end).
            reduced: ``(rows,)`` fractions of the dense FLOPs removed by the groups decided so far.
            previous_action: ``(rows,)`` pruning ratios applied to the previous group.
            widths: ``(rows, groups)`` kept channels, the groups not decided yet at their dense count (used with
                ``history`` only).
            target: The episodes' target ratio (the last feature, with ``target`` only).
        """
        rows = len(reduced)
        out = np.empty((rows, self.size), dtype=np.float64)
        out[:, : len(self._static[index])] = self._static[index]
        dynamic = np.stack([reduced, np.full(rows, self._rest[index]), previous_action], axis=1).astype(np.float64)
        column = len(self._static[index]) + 3
        out[:, column - 3 : column] = np.clip(dynamic, 0.0, 1.0)
        if self.history:
            out[:, column : column + len(self._names)] = np.clip(1.0 - widths / self._channels, 0.0, 1.0)
        if self.target:
            out[:, -1] = min(max(target, 0.0), 1.0)
        return out.astype(np.float32)
