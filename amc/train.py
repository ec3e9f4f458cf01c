"""Training, fine-tuning, evaluation and BatchNorm recalibration."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from amc.errors import ConfigError
from amc.progress import Progress


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


LrLambda = Callable[[int], float]
"""``factor(step) -> multiplier of the initial learning rate``."""


def cosine_factor(total: int) -> LrLambda:
    """Cosine decay from 1 to 0 over ``total`` steps."""
    return lambda step: 0.5 * (1 + math.cos(math.pi * step / total))


def warmup_cosine_factor(total: int, warmup: int) -> LrLambda:
    """Linear warm-up over the first ``warmup`` steps (from ``1 / (warmup + 1)`` to 1), then cosine to 0."""
    if warmup <= 0:
        return cosine_factor(total)
    decay = max(total - warmup, 1)
    return lambda step: (
        (step + 1) / (warmup + 1) if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay))
    )


def _sgd(
    model: nn.Module, config: TrainConfig, factor: LrLambda
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(model, inputs, targets) -> scalar``: what one training step minimises."""


def label_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``model``'s logits against the labels."""
    return nn.functional.cross_entropy(model(inputs), targets)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the dense model) during fine-tuning (Hinton et al., 2015).

    The loss is ``(1 - weight) * CE(student, labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Attributes:
        teacher: The teacher model (run in eval mode, never trained).
        weight: Weight of the teacher term in [0, 1]; 0 is plain fine-tuning.
        temperature: Softening temperature T of both distributions (> 0).
    """

    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"distillation weight must be in [0, 1] (0: labels only), got {self.weight}")
        if not self.temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {self.temperature}")

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        with torch.no_grad():
            teacher = self.teacher.eval()(inputs)
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        hard = nn.functional.cross_entropy(logits, targets)
        return (1.0 - self.weight) * hard + self.weight * (t * t) * soft


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    bar: Progress,
    epoch: int,
    loss_fn: LossFn = label_loss,
) -> None:
    """One pass over ``loader`` in train mode, one optimizer and scheduler step per batch."""
    device = _device_of(model)
    model.train()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        loss = loss_fn(model, inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        bar.update()


def _bar(total: int, desc: str, progress: bool) -> Progress:
    """A tqdm bar on a terminal, else a line every few seconds (see :mod:`amc.progress`); nothing without ``progress``."""
    return Progress(total, desc, "step", enabled=progress, leave=False)


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    desc: str = "train",
    progress: bool = True,
    after_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Trains ``model`` in place with SGD and a cosine schedule; returns it.

    Args:
        after_epoch: Called with ``(epoch, model)`` before training (epoch 0) and after each epoch (1 to
            ``config.epochs``), e.g. to keep an early epoch's weights for rewinding.
    """
    if after_epoch is not None:
        after_epoch(0, model)
    if config.epochs == 0:
        return model
    torch.manual_seed(config.seed)
    total = config.epochs * len(loader)
    opt, sched = _sgd(model, config, cosine_factor(total))
    bar = _bar(total, desc, progress)
    for epoch in range(config.epochs):
        _train_epoch(model, loader, opt, sched, bar, epoch)
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
    bar.close()
    model.eval()
    return model


@dataclass(frozen=True)
class FinetuneReport:
    """What one fine-tuning run did, measured on the validation loader it was given.

    Attributes:
        epochs: Epochs trained.
        top1_before: Validation top-1 of the starting weights (None without a validation loader).
        best_top1: Validation top-1 of the returned weights (None without a validation loader).
        best_epoch: Epoch whose weights were returned: 0 for the starting weights, ``epochs`` for the
            last; always ``epochs`` without a validation loader (no selection).
        history: Validation top-1 of the starting weights and after each epoch (``epochs + 1`` values;
            empty without a validation loader).
    """

    epochs: int
    top1_before: float | None = None
    best_top1: float | None = None
    best_epoch: int = 0
    history: tuple[float, ...] = ()

    @property
    def selected(self) -> bool:
        """Whether the returned weights were chosen on a validation loader."""
        return bool(self.history)


FINETUNE_LR = 0.01
"""Default peak fine-tuning learning rate. Measured on the digits ResNet-20 (trained at 0.1) pruned
uniformly to 50% / 70% of its channels, 2 and 5 epochs, 3 seeds: 0.01 recovers as much search-val and
test top-1 as 0.02 and more than 0.005 / 0.002; 0.05 and above make the first epoch much worse."""


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    epochs: int = 5,
    lr: float = FINETUNE_LR,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
    *,
    val_loader: DataLoader | None = None,
    warmup: float = 0.1,
    distill: Distillation | None = None,
    lr_factor: LrLambda | None = None,
    label: str = "fine-tune",
) -> FinetuneReport:
    """Fine-tunes a (pruned) model in place: SGD, a short linear warm-up, then cosine decay to zero.

    With ``val_loader`` (a held-out split such as search-val, never test) the model is evaluated before
    training and after every epoch, and the best weights (the starting ones included; on a tie the later
    epoch, which measured better on test) are restored at the end, so fine-tuning never returns a model
    that is worse on that split.
    Without it the weights after the last epoch are kept.

    For learning-rate rewinding pass the original training learning rate as ``lr``.

    Args:
        model: The model to fine-tune; changed in place.
        train_loader: Training batches.
        epochs: Passes over ``train_loader``.
        lr: Peak learning rate (reached after the warm-up).
        weight_decay: L2 penalty.
        seed: Seed of torch during training.
        progress: Show progress (a bar on a terminal, else a line every few seconds; see :mod:`amc.progress`).
        val_loader: Split to select the best epoch on; None turns selection off.
        warmup: Fraction of the steps spent on the linear warm-up, in [0, 1).
        distill: Learn from a teacher's softened outputs as well as from the labels; None: labels only.
        lr_factor: The learning-rate multiplier per step (e.g. the rest of a training schedule, to retrain);
            None: the warm-up and cosine decay above.
        label: What the progress lines call it (e.g. ``fine-tune uniform``).

    Returns:
        What was trained and chosen; the model itself is changed in place.
    """
    if not 0 <= warmup < 1:
        raise ConfigError(f"warm-up must be a fraction of the steps in [0, 1), got {warmup}")
    config = TrainConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)
    history = [evaluate(model, val_loader)] if val_loader is not None else []
    best_state = state_copy(model) if val_loader is not None else None
    if epochs:
        torch.manual_seed(seed)
        total = epochs * len(train_loader)
        opt, sched = _sgd(model, config, lr_factor or warmup_cosine_factor(total, int(warmup * total)))
        bar = _bar(total, label, progress)
        for epoch in range(epochs):
            _train_epoch(model, train_loader, opt, sched, bar, epoch, distill or label_loss)
            if val_loader is not None:
                history.append(evaluate(model, val_loader))
                if history[-1] >= max(history[:-1]):
                    best_state = state_copy(model)
        bar.close()
    model.eval()
    if best_state is None:
        return FinetuneReport(epochs, best_epoch=epochs)
    best = max(range(len(history)), key=lambda i: (history[i], i))  # the latest of equal maxima
    model.load_state_dict(best_state)
    return FinetuneReport(epochs, history[0], history[best], best, tuple(history))


def state_copy(model: nn.Module, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """``model``'s state_dict that ``load_state_dict`` restores exactly, its ``_metadata`` included: the per-module
    versions that torchvision's MNASNet, ViT and others read when loading, and which ``torch.save`` /
    ``torch.load(weights_only=True)`` keep. Without ``device`` the tensors are cloned (a copy to restore later);
    with it they are moved there, which copies only tensors that are elsewhere (enough to save them)."""
    state = model.state_dict()
    copy = OrderedDict(
        (k, v.detach().to(device) if device is not None else v.detach().clone()) for k, v in state.items()
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        copy._metadata = metadata  # type: ignore[attr-defined]
    return copy


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


CALIBRATION_BATCH_SIZE = 64
"""Images per BatchNorm calibration batch, in a search (``env.bn_batch_size``'s default) and in ``amc prune``."""


def draw_calibration(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_batches: int, gradient_batch: bool
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """The BatchNorm calibration inputs and the gradient criteria's batch, drawn one way for every caller.

    A search scores a policy with these batches and ``amc prune`` applies it with them, so one policy gets one
    calibration and one number in every output: both pass ``data.loader("train", CALIBRATION_BATCH_SIZE,
    shuffle=True, seed=seed)`` with the same seed.

    Args:
        loader: The seeded, shuffled training loader (iterated once for the calibration, once more for the
            gradient batch).
        num_batches: Calibration batches (0: none).
        gradient_batch: Also draw the batch that gradient-based criteria (taylor) read.

    Returns:
        The calibration inputs and the (inputs, targets) gradient batch (None unless ``gradient_batch``).
    """
    calib = calibration_batches(loader, num_batches) if num_batches else []
    grad = None
    if gradient_batch:
        inputs, targets = next(iter(loader))
        grad = (inputs, targets)
    return calib, grad


def recalibrate_bn_seeded(model: nn.Module, batches: list[torch.Tensor], seed: int) -> nn.Module:
    """:func:`recalibrate_bn` with torch's generator seeded (dropout in train mode), leaving the global one as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return recalibrate_bn(model, batches)
