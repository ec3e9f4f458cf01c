"""Cost model: exact FLOPs and params of a model, and measured latency.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, per input
image). Latency is measured with ``torch.utils.benchmark.Timer.blocked_autorange`` and cached per
width configuration, since many policies in a search share widths.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.errors import ConfigError


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


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Data types latency can be measured in (model weights and inputs)."""
LATENCY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
"""What runs the forward passes latency is measured on: eager PyTorch, the model exported to ONNX and run by
ONNX Runtime (:mod:`amc.onnx_latency`), or that ONNX model quantized to INT8 first (:mod:`amc.quantize`), so that
a latency budget is met by the model as deployed after ``amc prune --quantize int8``."""


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Attributes:
        batch_size: Images per forward pass.
        threads: torch intra-op threads while measuring (0: leave torch's setting).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        min_run_time: Seconds of measurement per configuration (per table entry for the latency cost model;
            at least 16 runs).
        dtype: Data type of weights and inputs: ``float32``, ``float16`` or ``bfloat16``.
        grid: Widths measured per channel axis of each layer by the latency cost model
            (:mod:`amc.latency`), which interpolates between them; at least 2.
        backend: What runs the forward passes (:data:`LATENCY_BACKENDS`): ``torch`` (eager PyTorch, as
            ``amc prune`` outputs run), ``onnxruntime`` (the model exported to ONNX, run by an ONNX Runtime
            session with its default graph optimisations and ``threads`` intra-op threads; see
            :mod:`amc.onnx_latency`) or ``onnxruntime-int8`` (that ONNX model quantized to INT8 first, CPU and
            float32 only; see :mod:`amc.quantize`).
        rebuild: Measure the latency table again instead of reading its cached entries (the new figures replace
            them); a table is also measured again when it disagrees with whole models measured when it is loaded
            (:mod:`amc.latency_check`).

    Raises:
        ConfigError: on a non-positive ``min_run_time`` or ``batch_size``, a negative ``threads``, an unknown
            device, dtype or backend, ``grid`` below 2, or ``bfloat16`` with ``onnxruntime``. Whether a CUDA
            device (and for ``onnxruntime`` its CUDA provider) exists is checked when measuring
            (:meth:`check_available`), so a config written on a GPU machine still loads elsewhere.
    """

    batch_size: int = 1
    threads: int = 1
    device: str = "cpu"
    min_run_time: float = 0.2
    dtype: str = "float32"
    grid: int = 5
    backend: str = "torch"
    rebuild: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.min_run_time, bool) or not self.min_run_time > 0 or not math.isfinite(self.min_run_time):
            raise ConfigError(
                f"min_run_time must be a positive number of seconds of measurement, got {self.min_run_time!r}"
            )
        for name, value, low in (
            ("batch_size", self.batch_size, 1),
            ("threads", self.threads, 0),
            ("grid", self.grid, 2),
        ):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.rebuild, bool):
            raise ConfigError(f"rebuild must be true or false, got {self.rebuild!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"latency dtype {self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        if not _DEVICE.fullmatch(str(self.device)):
            raise ConfigError(f"latency device {self.device!r} is unknown; use cpu, cuda or cuda:N")
        if self.backend not in LATENCY_BACKENDS:
            raise ConfigError(f"backend {self.backend!r} is unknown; use one of {', '.join(LATENCY_BACKENDS)}")
        if self.backend == "onnxruntime-int8" and (self.dtype != "float32" or self.device != "cpu"):
            raise ConfigError(
                "backend onnxruntime-int8 quantizes a float32 model and measures it on the CPU; use dtype: float32 "
                "and device: cpu"
            )
        if self.backend == "onnxruntime" and self.dtype == "bfloat16":
            raise ConfigError(
                "dtype 'bfloat16' cannot be measured with backend onnxruntime (it has no bfloat16 convolutions); "
                "use float32 or float16"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def effective_threads(self) -> int:
        """The intra-op threads a measurement runs with (``threads``, or torch's current setting when 0)."""
        return int(self.threads or torch.get_num_threads())

    def check_available(self) -> None:
        """Raises ConfigError when the device does not exist on this machine (a CUDA device without a GPU), or
        the backend cannot run on it (``onnxruntime`` not installed, or without its CUDA provider)."""
        if self.backend.startswith("onnxruntime"):
            from amc.onnx_latency import check_available

            check_available(self.device)
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"latency device {self.device!r} needs a CUDA GPU, but torch finds none on this machine; "
                    "measure on device: cpu"
                )
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise ConfigError(
                    f"latency device {self.device!r} does not exist: this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )


_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


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
        min_ms: The fastest block: what the code takes when no other process interrupts it (on a shared
            machine the median moves with the load, the fastest block hardly; latency targets use it).
    """

    median_ms: float
    iqr_ms: float
    blocks: int
    min_ms: float


@torch.no_grad()
def latency_stats(
    model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig = LatencyConfig()
) -> LatencyStats:
    """Median, interquartile range and fastest of the timed blocks of one forward pass (:func:`_blocks`).

    With ``config.backend`` ``onnxruntime`` the model is exported to ONNX and one run of its ONNX Runtime
    session (:func:`amc.onnx_latency.onnx_runner`) is timed the same way: a warm-up, then blocked runs.
    """
    _quiet_benchmark_import()
    from torch.utils import benchmark

    config.check_available()
    threads = config.effective_threads()
    if config.backend.startswith("onnxruntime"):
        from amc.onnx_latency import onnx_runner

        example = torch.randn(config.batch_size, *input_shape, dtype=config.torch_dtype)
        run = onnx_runner(model, example, threads, config.device, int8=config.backend == "onnxruntime-int8")
        return time_call(run, threads, config.min_run_time)
    device = torch.device(config.device)
    if device.type != "cpu" or config.dtype != "float32":
        model = copy.deepcopy(model)  # measure a copy: the caller's model stays where and what it was
    was_training = model.training
    model = model.to(device=device, dtype=config.torch_dtype).eval()
    x = torch.randn(config.batch_size, *input_shape, device=device, dtype=config.torch_dtype)
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
    try:
        model(x)  # warm-up
        times = _blocks(timer, config.min_run_time)
    finally:
        model.train(was_training)
    return _stats(times)


BLOCKS = 16
"""Blocks a latency measurement is split into (at least): their median and minimum ignore the blocks
another process interrupted on a busy machine, where one long block (``blocked_autorange``'s choice for a
small model) takes every interruption into its mean."""
QUARTILES = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)


def _quiet_benchmark_import() -> None:
    # torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on machines without CUDA: not
    # the user's concern when timing a forward pass
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def time_call(run: Callable[[], Any], threads: int, min_run_time: float) -> LatencyStats:
    """Times ``run()`` as every latency here is timed: one warm-up call, then :func:`_blocks`' blocked runs."""
    _quiet_benchmark_import()
    from torch.utils import benchmark

    run()  # warm-up
    return _stats(_blocks(benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads), min_run_time))


def _blocks(timer: Any, min_run_time: float) -> list[float]:
    """Seconds per run of at least :data:`BLOCKS` timed blocks, together about ``min_run_time`` (at least one
    run per block). A block that took far longer than planned (another process took the cores) makes the
    next ones shorter, so a busy machine does not stretch the measurement."""
    target = min_run_time / BLOCKS
    number = max(1, int(target / max(min(timer.timeit(1).mean for _ in range(3)), 1e-9)))
    times: list[float] = []
    spent = 0.0
    while len(times) < BLOCKS or spent < min_run_time:
        per_run = timer.timeit(number).mean
        times.append(per_run)
        spent += per_run * number
        if per_run * number > 4 * target:
            number = max(1, int(target / per_run))
    return times


def _stats(times: list[float]) -> LatencyStats:
    q1, median, q3 = (float(v) * 1e3 for v in torch.tensor(times, dtype=torch.float64).quantile(QUARTILES))
    return LatencyStats(median, q3 - q1, len(times), min(times) * 1e3)


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
