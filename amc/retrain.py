"""Retraining a pruned architecture instead of fine-tuning its pruned weights: weight rewinding and from scratch.

The lottery-ticket question (Frankle & Carbin, 2019; Renda et al., 2020): once pruning has chosen which channels
(or weights) stay, should the survivors keep their trained values (fine-tuning, learning-rate rewinding), go back
to their values at an early epoch of the dense training and train again with the rest of its schedule (weight
rewinding), or start from a fresh initialisation with the full schedule (from scratch)?

Weight rewinding needs the dense weights of that early epoch: ``amc train --keep-epoch K`` writes them beside the
dense model and records them, with the training schedule, in its ``report.json``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from amc.errors import ConfigError
from amc.pruning import History, replay_history
from amc.train import LrLambda, TrainConfig, cosine_factor

RETRAIN_METHODS = ("rewind", "scratch")
"""``rewind``: weights of the kept epoch, the rest of the schedule; ``scratch``: a fresh init, the full schedule."""


@dataclass(frozen=True)
class Retraining:
    """How a pruned architecture is restarted and trained again.

    Attributes:
        method: ``rewind`` or ``scratch`` (see :data:`RETRAIN_METHODS`).
        schedule: The dense model's training schedule (epochs, learning rate, weight decay, seed).
        start_epoch: Epoch whose dense weights a rewind starts from (0 for scratch).
        weights: The dense model at ``start_epoch`` (rewind only).
    """

    method: str
    schedule: TrainConfig
    start_epoch: int = 0
    weights: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.method not in RETRAIN_METHODS:
            raise ConfigError(f"unknown retraining {self.method!r}; choose one of: {', '.join(RETRAIN_METHODS)}")
        if self.method == "rewind" and self.weights is None:
            raise ConfigError("weight rewinding needs the dense weights of an early epoch (amc train --keep-epoch K)")
        if not 0 <= self.start_epoch < max(self.schedule.epochs, 1):
            raise ConfigError(f"start epoch {self.start_epoch} is outside the {self.schedule.epochs}-epoch schedule")

    @property
    def epochs(self) -> int:
        """Epochs trained: the rest of the schedule after ``start_epoch``."""
        return self.schedule.epochs - self.start_epoch

    def lr_factor(self, steps_per_epoch: int) -> LrLambda:
        """The original cosine schedule from ``start_epoch`` on (the training learning rate is the peak)."""
        total = self.schedule.epochs * steps_per_epoch
        offset = self.start_epoch * steps_per_epoch
        full = cosine_factor(total)
        return lambda step: full(step + offset)

    def starting_model(self, pruned: nn.Module, history: History, example_inputs: torch.Tensor) -> nn.Module:
        """The pruned architecture with its starting weights: the kept epoch's on the kept channels (rewind), or
        a fresh initialisation (scratch). Weights that pruning zeroed (sparse granularities) stay zero."""
        if self.method == "rewind":
            assert self.weights is not None
            start = replay_history(copy.deepcopy(self.weights), example_inputs, history)
        else:
            start = copy.deepcopy(pruned)
            torch.manual_seed(self.schedule.seed)
            for module in start.modules():
                if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                    module.reset_parameters()
        with torch.no_grad():
            _keep_zeros(start, pruned)
        return start.eval()


def _keep_zeros(start: nn.Module, pruned: nn.Module) -> None:
    """Zeroes in ``start`` the weights that are zero in ``pruned`` (the masks of unstructured / N:M pruning)."""
    for (name, p), (_, q) in zip(start.named_parameters(), pruned.named_parameters()):
        if p.shape != q.shape:
            raise ConfigError(
                f"the restarted model's {name} has shape {tuple(p.shape)}, not the pruned {tuple(q.shape)}"
            )
        if p.dim() > 1 and bool((q == 0).any()):
            p.mul_(q != 0)


def retraining_for(method: str, checkpoint: str | Path) -> Retraining:
    """The :class:`Retraining` of a dense checkpoint written by ``amc train``, read from its ``report.json``.

    Raises:
        ConfigError: When the report is missing, or a rewind is asked for and no early epoch was kept.
    """
    from amc.checkpoint import load_model

    ckpt = Path(checkpoint)
    report_path = ckpt.parent / "report.json"
    try:
        report = json.loads(report_path.read_text())
        schedule = TrainConfig(**report["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"retraining needs the dense model's training schedule from {report_path} (written by amc train): {exc}"
        ) from None
    if method == "scratch":
        return Retraining("scratch", schedule)
    kept = report.get("kept_epoch")
    if not kept:
        raise ConfigError(
            f"{ckpt} was trained without --keep-epoch, so there are no early weights to rewind to; train it "
            "again with amc train --keep-epoch K (e.g. K = 1), or use --from-scratch / --lr-rewind"
        )
    weights = load_model(ckpt.parent / kept["file"]).model
    return Retraining("rewind", schedule, int(kept["epoch"]), weights)
