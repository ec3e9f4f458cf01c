"""Latency under ONNX Runtime: the model exported to ONNX, timed in an inference session.

The ``onnxruntime`` latency backend (``LatencyConfig(backend="onnxruntime")``, YAML ``env.latency.backend``)
measures what a deployment that ships the exported ONNX graph runs, rather than eager PyTorch:

- **Export.** The model (in eval mode, a float32 copy on the CPU, converted to ``config.dtype``) is exported
  with ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``: it needs only the ``onnx`` package and
  exports a small layer in ~15 ms, where the ``torch.export``-based exporter takes ~0.4 s, which a latency
  table of a few hundred entries would feel) at a fixed input shape (``config.batch_size`` images), with
  constant folding (BatchNorm folded into the convolution before it), into memory.
- **Session.** An ``onnxruntime.InferenceSession`` with ``intra_op_num_threads = config.effective_threads()``,
  one inter-op thread, sequential execution and ONNX Runtime's default graph optimisation level
  (``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+activation fusion and layout transforms), on the CPU
  provider, or the CUDA provider for a ``cuda`` device (inputs and outputs bound on the GPU, so that no host
  copy is timed).
- **Timing.** One warm-up run, then ``torch.utils.benchmark.Timer.blocked_autorange`` over
  ``session.run``: the median and interquartile range of blocked runs, exactly as the ``torch`` backend
  (:func:`amc.cost.latency_stats`) times ``model(x)``.

``onnxruntime`` is imported here only, so ``import amc`` works without it; a missing install is a
:class:`~amc.errors.ConfigError` with the ``pip install`` line.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import io
import logging
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from amc.errors import ConfigError

if TYPE_CHECKING:
    from amc.cost import LatencyConfig, LatencyStats

INSTALL_HINT = "pip install onnx onnxruntime (onnxruntime-gpu for a cuda device)"


def runtime() -> ModuleType:
    """The ``onnxruntime`` module, or a ConfigError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"latency backend onnxruntime needs the onnxruntime package ({exc}); {INSTALL_HINT}"
        ) from None
    return onnxruntime


def runtime_version() -> str | None:
    """The installed onnxruntime's version (any of its distributions), without importing it; None if absent."""
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_available(device: str) -> None:
    """Raises ConfigError unless onnxruntime is installed and, for a ``cuda`` device, has its CUDA provider."""
    ort = runtime()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            f"latency backend onnxruntime on device {device!r} needs onnxruntime's CUDAExecutionProvider, but "
            f"this onnxruntime {ort.__version__} has only {', '.join(ort.get_available_providers())}; install "
            "onnxruntime-gpu, or measure on device: cpu"
        )


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (in eval mode, on ``example``'s device and dtype) exported to an in-memory ONNX model."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.9+ warns that the TorchScript exporter is deprecated (the module docstring says why it is used)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=["input"],
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def session(onnx_model: bytes, config: LatencyConfig) -> object:
    """An ``onnxruntime.InferenceSession`` of ``onnx_model`` set up as the module docstring says."""
    ort = runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.effective_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no notes on which provider runs which node
    if config.device.startswith("cuda"):
        providers: list = [("CUDAExecutionProvider", {"device_id": _device_index(config.device)})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(onnx_model, sess_options=options, providers=providers)


def exported_session(
    model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig
) -> tuple[object, np.ndarray]:
    """``model`` exported and loaded in a session, and the random input batch (as numpy) it is timed on.

    The caller's model is not modified (a copy is exported unless it is a float32 model on the CPU and
    ``config.dtype`` is float32; the original's train/eval mode is restored).
    """
    config.check_available()
    dtype = config.torch_dtype
    if any(p.device.type != "cpu" or p.dtype != dtype for p in model.parameters()):
        model = copy.deepcopy(model).cpu().to(dtype=dtype)
    x = torch.randn(config.batch_size, *input_shape, dtype=dtype)
    was_training = model.training
    try:
        with torch.no_grad():
            onnx_model = export_onnx(model.eval(), x)
    finally:
        model.train(was_training)
    return session(onnx_model, config), x.numpy()


def onnx_latency_stats(model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig) -> LatencyStats:
    """Median and interquartile range of one ONNX Runtime run of ``model`` exported to ONNX (the module
    docstring says how), over ``torch.utils.benchmark``'s blocked runs, in milliseconds."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # as amc.cost.latency_stats
    from torch.utils import benchmark

    from amc.cost import LatencyStats

    sess, x = exported_session(model, input_shape, config)
    if config.device.startswith("cuda"):
        index = _device_index(config.device)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("input", runtime().OrtValue.ortvalue_from_numpy(x, "cuda", index))
        for output in sess.get_outputs():
            binding.bind_output(output.name, "cuda", index)
        run = functools.partial(sess.run_with_iobinding, binding)
    else:
        run = functools.partial(sess.run, None, {"input": x})
    run()  # warm-up (allocations, kernel selection)
    m = benchmark.Timer(stmt="run()", globals={"run": run}).blocked_autorange(min_run_time=config.min_run_time)
    return LatencyStats(float(m.median * 1e3), float(m.iqr * 1e3), len(m.times))


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


__all__ = [
    "check_available",
    "export_onnx",
    "exported_session",
    "onnx_latency_stats",
    "runtime",
    "runtime_version",
    "session",
]
