"""Several budgets in one search: the targets an episode may draw, and which one each episode gets.

``env.targets`` is a list of ratios (each episode gets one of them) or a range ``{low, high}`` (each episode
draws one in it). The episode's target joins the observation, so one agent learns how the layers trade
accuracy for cost across all of them, and the budget wall holds each episode to its own target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from amc.errors import ConfigError


@dataclass(frozen=True)
class TargetRange:
    """Every ratio in ``[low, high]``: each episode draws its target uniformly in it.

    Attributes:
        low: Smallest target ratio, in (0, 1].
        high: Largest target ratio, in (0, 1], above ``low``.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        for name, value in (("low", self.low), ("high", self.high)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
                raise ConfigError(f"env.targets.{name} must be a ratio in (0, 1], got {value!r}")
        if not self.low < self.high:
            raise ConfigError(f"env.targets needs low < high, got low={self.low}, high={self.high}")


Targets = tuple[float, ...] | TargetRange


def parse_targets(value: object) -> Targets | None:
    """``env.targets`` as given in YAML or Python (a list of ratios, ``{low, high}``, or None) -> its typed form."""
    if value is None or isinstance(value, TargetRange):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high"}
        if unknown or len(value) != 2:
            raise ConfigError(f"env.targets as a range is {{low: L, high: H}}, got {dict(value)!r}")
        return TargetRange(value["low"], value["high"])
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"env.targets must be a non-empty list of ratios or {{low, high}}, got {value!r}")
    ratios = []
    for ratio in value:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
            raise ConfigError(f"every ratio of env.targets must be in (0, 1], got {ratio!r}")
        ratios.append(float(ratio))
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"env.targets lists a ratio twice: {ratios}")
    return tuple(ratios)


def smallest(targets: Targets) -> float:
    """The tightest budget of ``targets`` (the one the fewest channels must still meet)."""
    return targets.low if isinstance(targets, TargetRange) else min(targets)


def contains(targets: Targets, ratio: float) -> bool:
    """Whether an episode may be given ``ratio``."""
    if isinstance(targets, TargetRange):
        return targets.low <= ratio <= targets.high
    return any(math.isclose(ratio, t, rel_tol=0.0, abs_tol=1e-12) for t in targets)


def episode_target(targets: Targets, seed: int, episode: int) -> float:
    """The target of ``episode`` of a search seeded ``seed``.

    A list is played round-robin in an order shuffled once per search (so every target gets an equal share of
    the episodes, and any ``len(targets)`` consecutive episodes cover them all); a range is drawn uniformly,
    seeded by (seed, episode).
    """
    if isinstance(targets, TargetRange):
        rng = np.random.default_rng(np.random.SeedSequence([seed, episode, 7]))
        return float(rng.uniform(targets.low, targets.high))
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(len(targets))
    return targets[int(order[episode % len(targets)])]
