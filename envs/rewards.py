"""Rewards of the channel-pruning search: a small base class plus a registry.

The environment pays the reward once, at the last step of an episode, from an :class:`Outcome` (the
pruned model's accuracy and exact costs); every intermediate step pays 0.

Registered rewards:

* ``acc``: top-1 (fraction in [0, 1]); the budget is enforced by the action wall (AMC's
  resource-constrained setting).
* ``acc_log_flops``: ``-(1 - top1) * log(FLOPs)`` with the pruned model's FLOPs per image (AMC's
  ``R_FLOPs``).
* ``acc_size``: ``top1 - size_lambda * size / target``, where ``size`` is the kept fraction of the
  target metric (the params ratio for a size target) and ``target`` its target ratio: the trade-off
  between accuracy and size.

Register your own::

    @REWARDS.register("acc_params")
    class AccParams(Reward):
        def _compute(self, outcome: Outcome) -> float:
            return outcome.top1 - 0.1 * outcome.params_ratio
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amc.errors import ConfigError
from amc.registry import Registry


@dataclass(frozen=True)
class Outcome:
    """What a reward sees at the end of an episode.

    Attributes:
        top1: Top-1 accuracy on the evaluation split, in [0, 1].
        flops: FLOPs per image of the pruned model (exact count).
        params: Parameters of the pruned model (exact count).
        flops_ratio: ``flops`` over the dense model's FLOPs.
        params_ratio: ``params`` over the dense model's parameters.
        cost_ratio: Kept fraction of the target metric.
        target_ratio: The target's allowed fraction of the dense cost.
    """

    top1: float
    flops: int
    params: int
    flops_ratio: float
    params_ratio: float
    cost_ratio: float
    target_ratio: float


class Reward:
    """Base class: ``reward(outcome)`` checks the outcome, calls :meth:`_compute` and checks the value.

    Args:
        size_lambda: Weight of the size term (used by ``acc_size``; ignored by the others).
    """

    def __init__(self, size_lambda: float = 1.0) -> None:
        if not math.isfinite(size_lambda) or size_lambda < 0:
            raise ConfigError(f"size_lambda must be a finite number >= 0, got {size_lambda}")
        self.size_lambda = size_lambda

    def __call__(self, outcome: Outcome) -> float:
        if not 0.0 <= outcome.top1 <= 1.0:
            raise ConfigError(f"top-1 must be a fraction in [0, 1], got {outcome.top1}")
        value = float(self._compute(outcome))
        if not math.isfinite(value):
            raise ConfigError(f"reward {type(self).__name__} is not finite ({value}) for {outcome}")
        return value

    def _compute(self, outcome: Outcome) -> float:
        """Hook: the reward for ``outcome``."""
        raise NotImplementedError


REWARDS: Registry[type[Reward]] = Registry("reward")


@REWARDS.register("acc")
class Accuracy(Reward):
    """Top-1 accuracy; the budget is held by the action wall."""

    def _compute(self, outcome: Outcome) -> float:
        return outcome.top1


@REWARDS.register("acc_log_flops")
class AccuracyLogFlops(Reward):
    """AMC's ``-error * log(FLOPs)``: rewards accuracy and, weakly, fewer FLOPs."""

    def _compute(self, outcome: Outcome) -> float:
        return -(1.0 - outcome.top1) * math.log(max(outcome.flops, 1))


@REWARDS.register("acc_size")
class AccuracySize(Reward):
    """``top1 - size_lambda * size / target``: accuracy against the kept fraction of the target metric."""

    def _compute(self, outcome: Outcome) -> float:
        return outcome.top1 - self.size_lambda * outcome.cost_ratio / outcome.target_ratio


def create_reward(name: str, size_lambda: float = 1.0) -> Reward:
    """Builds the reward registered under ``name``."""
    return REWARDS.get(name)(size_lambda=size_lambda)
