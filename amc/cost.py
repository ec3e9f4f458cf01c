"""Cost model: exact FLOPs and params of a model, and measured latency.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, per input
image). Latency is measured with ``torch.utils.benchmark.Timer.blocked_autorange`` and cached per
width configuration, since many policies in a search share widths.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Cost:
    """FLOPs (per input image) and parameter count of a model."""

    flops: int
    params: int


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of non-zero parameters (what unstructured and N:M sparsity reduce)."""
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


@torch.no_grad()
def count_flops(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Exact FLOPs of one forward pass on a single image (the first of ``example_inputs``)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example_inputs[:1])
    model.train(was_training)
    return int(counter.get_total_flops())


def count_cost(model: nn.Module, example_inputs: torch.Tensor) -> Cost:
    """Exact FLOPs (per image) and params of ``model``."""
    return Cost(count_flops(model, example_inputs), count_params(model))


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Attributes:
        batch_size: Images per forward pass.
        threads: torch intra-op threads while measuring (0: leave torch's setting).
        device: ``cpu`` or ``cuda``.
        min_run_time: Seconds of measurement per configuration.
    """

    batch_size: int = 1
    threads: int = 1
    device: str = "cpu"
    min_run_time: float = 0.2


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig = LatencyConfig()) -> float:
    """Median wall time of one forward pass in milliseconds."""
    return latency_stats(model, input_shape, config).median_ms


@dataclass(frozen=True)
class LatencyStats:
    """Repeated blocked measurements of one forward pass (``torch.utils.benchmark``), in milliseconds.

    Attributes:
        median_ms: Median over the measured blocks.
        iqr_ms: Interquartile range over the blocks (the spread: a shared machine is noisy).
        blocks: Number of blocks measured.
    """

    median_ms: float
    iqr_ms: float
    blocks: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ± {self.iqr_ms / 2:.3f}"


@torch.no_grad()
def latency_stats(
    model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig = LatencyConfig()
) -> LatencyStats:
    """Median and interquartile range of one forward pass, over ``torch.utils.benchmark``'s blocked runs."""
    # torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on machines without CUDA: not
    # the user's concern when timing a forward pass
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    device = torch.device(config.device)
    model = model.to(device).eval()
    x = torch.randn(config.batch_size, *input_shape, device=device)
    timer = benchmark.Timer(
        stmt="model(x)", globals={"model": model, "x": x}, num_threads=config.threads or torch.get_num_threads()
    )
    model(x)  # warm-up
    m = timer.blocked_autorange(min_run_time=config.min_run_time)
    return LatencyStats(float(m.median * 1e3), float(m.iqr * 1e3), len(m.times))


class LatencyCache:
    """Measured latencies keyed by a width configuration (the kept channels of every group)."""

    def __init__(self, config: LatencyConfig = LatencyConfig()) -> None:
        self.config = config
        self._cache: dict[Hashable, float] = {}

    def get(self, key: Hashable, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """Latency of ``model`` in ms, measured once per ``key``."""
        if key not in self._cache:
            self._cache[key] = measure_latency(model, input_shape, self.config)
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)
