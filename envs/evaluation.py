"""Evaluation batches of one fixed shape, for cheap evaluation of many differently pruned models.

On CPU, PyTorch's oneDNN convolutions build (JIT-compile) kernels for every new combination of layer
width and input shape; each episode's model has new widths, so every distinct batch shape of an
episode pays that again. Measured on digits ResNet-20 (BatchNorm re-estimation on 8 x 64 images plus
300 search-val images): evaluation batches of 256 + 44 cost ~50-60 ms more on a fresh pruned model
than on a warm one; re-batching the split into batches of 64, the calibration batch size, with the
last one padded, cut that to ~0-13 ms. Padded images are evaluated but not counted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from amc.errors import ConfigError


@dataclass(frozen=True)
class EvalBatch:
    """A batch of evaluation images; only the first ``count`` are real (the rest is padding).

    Attributes:
        inputs: Images, ``size`` of them.
        targets: Labels, as many as ``inputs``.
        count: Real images at the front of the batch.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    count: int


def fixed_size_batches(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]], size: int, max_batches: int | None = None
) -> list[EvalBatch]:
    """Re-batches a split into batches of exactly ``size`` images (the last padded by repeating the first ones).

    Args:
        loader: Yields (inputs, targets) batches of any size.
        size: Images per batch.
        max_batches: Keep only the first this many batches of ``size`` (None: all).
    """
    pairs = [(x, y) for x, y in loader]
    if not pairs:
        raise ConfigError("the evaluation split is empty")
    inputs = torch.cat([x for x, _ in pairs])
    targets = torch.cat([y for _, y in pairs])
    batches = []
    for start in itertools.islice(range(0, len(inputs), size), max_batches):
        x, y = inputs[start : start + size], targets[start : start + size]
        count = len(x)
        if count < size:
            pad = torch.arange(size - count) % len(inputs)
            x, y = torch.cat([x, inputs[pad]]), torch.cat([y, targets[pad]])
        batches.append(EvalBatch(x, y, count))
    return batches


def real_images(batches: Sequence[EvalBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The real images and labels of ``batches`` (padding left out), in order, as two tensors."""
    inputs = torch.cat([b.inputs[: b.count] for b in batches])
    return inputs, torch.cat([b.targets[: b.count] for b in batches])


@torch.no_grad()
def top1(model: nn.Module, batches: Sequence[EvalBatch]) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on the real images of ``batches``."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for batch in batches:
        pred = model(batch.inputs.to(device)).argmax(1)[: batch.count]
        correct += int((pred == batch.targets[: batch.count].to(device)).sum())
        total += batch.count
    if total == 0:
        raise ConfigError("the evaluation split is empty")
    return correct / total


def evaluation_fingerprint(
    model: nn.Module,
    tensors: Iterable[torch.Tensor],
    batches: Sequence[EvalBatch],
    settings: Mapping[str, object],
) -> str:
    """A SHA-256 digest of what a pruned model's accuracy depends on besides its widths.

    Two environments with the same digest give the same top-1 to the same widths: the dense weights and
    buffers, the fixed calibration (and gradient) tensors, the real images and labels of the evaluation
    batches, and the settings that prune, recalibrate and evaluate (JSON, keys sorted).
    """
    digest = hashlib.sha256()

    def add(tensor: torch.Tensor) -> None:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())

    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        add(value)
    for tensor in tensors:
        add(tensor)
    for batch in batches:
        add(batch.inputs[: batch.count])
        add(batch.targets[: batch.count])
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return digest.hexdigest()
