"""Training, fine-tuning, evaluation and BatchNorm recalibration."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from amc.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training or fine-tuning run.

    Attributes:
        epochs: Passes over the training split.
        lr: Initial learning rate (SGD with Nesterov momentum, cosine schedule to zero).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        batch_size: Images per step.
        seed: Seed of the data order and of torch.
    """

    epochs: int = 15
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train(model: nn.Module, loader: DataLoader, config: TrainConfig, desc: str = "train", progress: bool = True) -> nn.Module:
    """Trains ``model`` in place with SGD and a cosine schedule; returns it."""
    if config.epochs == 0:
        return model
    torch.manual_seed(config.seed)
    device = _device_of(model)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    total = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    model.train()
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, unit="step")
    for epoch in range(config.epochs):
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            loss = nn.functional.cross_entropy(model(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    bar.close()
    model.eval()
    return model


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    epochs: int = 5,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fine-tunes a (pruned) model in place with SGD and a cosine schedule; returns it.

    For learning-rate rewinding pass the original training learning rate as ``lr``.
    """
    config = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)
    return train(model, train_loader, config, desc="fine-tune", progress=progress)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``loader``."""
    device = _device_of(model)
    model.eval()
    correct = total = 0
    for i, (inputs, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        pred = model(inputs.to(device)).argmax(1)
        correct += int((pred == targets.to(device)).sum())
        total += int(targets.numel())
    if total == 0:
        raise ConfigError("the evaluation split is empty")
    return correct / total


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Resets BatchNorm running statistics and re-estimates them on ``batches`` of inputs.

    Pruning changes the statistics every BatchNorm sees; without re-estimation a pruned residual
    network can fall to chance accuracy before any fine-tuning.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    device = _device_of(model)
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    seen = 0
    for inputs in batches:
        model(inputs.to(device))
        seen += 1
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()
    if seen == 0:
        raise ConfigError("BatchNorm recalibration got no batches")
    return model


def calibration_batches(loader: DataLoader, num_batches: int) -> list[torch.Tensor]:
    """The first ``num_batches`` input batches of ``loader`` (kept in memory for reuse)."""
    out = []
    for i, (inputs, _) in enumerate(loader):
        if i >= num_batches:
            break
        out.append(inputs)
    return out
