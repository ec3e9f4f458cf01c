"""Latency under ONNX Runtime: the model exported to ONNX, timed in an inference session.

The ``onnxruntime`` latency backend (``LatencyConfig(backend="onnxruntime")``, YAML ``env.latency.backend``)
measures what a deployment that ships the exported ONNX graph runs, rather than eager PyTorch:

- **Export.** The model (in eval mode, on the CPU, in ``config.dtype``: a copy when it has to be moved or
  converted) is exported with ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``: it needs only the ``onnx`` package and
  exports a small layer in ~15 ms, where the ``torch.export``-based exporter takes ~0.4 s, which a latency
  table of a few hundred entries would feel; ONNX Runtime ran both exporters' graphs of ResNet-20 and
  MobileNetV2-small equally fast within noise) at a fixed input shape (``config.batch_size`` images), with
  constant folding (BatchNorm folded into the convolution before it), into memory.
- **Session.** An ``onnxruntime.InferenceSession`` with ``intra_op_num_threads = config.effective_threads()``,
  one inter-op thread, sequential execution and ONNX Runtime's default graph optimisation level
  (``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm+activation fusion and layout transforms), on the CPU
  provider, or the CUDA provider for a ``cuda`` device (inputs and outputs bound on the GPU, so that no host
  copy is timed).
- **Timing.** :func:`amc.cost.latency_stats` times :func:`onnx_runner`'s call (``session.run``) as it times
  ``model(x)`` for the ``torch`` backend: one warm-up run, then ``torch.utils.benchmark``'s blocked runs
  (``blocked_autorange``), their median and interquartile range.

``onnxruntime`` is imported here only, so ``import amc`` works without it; a missing install is a
:class:`~amc.errors.ConfigError` with the ``pip install`` line.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import io
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

from amc.errors import ConfigError

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


def export_onnx(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> bytes:
    """``model`` (on ``example``'s device and dtype) exported in eval mode to an in-memory ONNX model; its train/eval
    mode is restored. With ``dynamic_batch`` the batch size is left open (input ``input``, output ``logits``), for a
    file that is shipped."""
    buffer = io.BytesIO()
    dynamic = {"output_names": ["logits"], "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    was_training = model.training
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch 2.9+ warns that the TorchScript exporter is deprecated (the module docstring says why it is used)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model.eval(),
                (example,),
                buffer,
                input_names=["input"],
                do_constant_folding=True,
                dynamo=False,
                **(dynamic if dynamic_batch else {}),
            )
    finally:
        model.train(was_training)
    return buffer.getvalue()


def on_cpu(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` itself when its parameters are on the CPU in ``dtype``, else a copy moved there (the caller's model
    stays where and what it was)."""
    if any(p.device.type != "cpu" or p.dtype != dtype for p in model.parameters()):
        return copy.deepcopy(model).cpu().to(dtype=dtype)
    return model


def session(onnx_model: bytes, threads: int, device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` of ``onnx_model`` with ``threads`` intra-op threads, set up as the
    module docstring says (the CPU provider, or the CUDA provider for a ``cuda`` device)."""
    ort = runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no notes on which provider runs which node
    if device.startswith("cuda"):
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": _device_index(device)})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(onnx_model, sess_options=options, providers=providers)


def exported_session(
    model: nn.Module, example: torch.Tensor, threads: int, device: str = "cpu", int8: bool = False
) -> Any:
    """``model`` exported at ``example``'s shape and dtype (on the CPU) and loaded in a :func:`session`; with
    ``int8`` quantized first (:func:`amc.onnx_quant.quantize_bytes`, activation ranges calibrated on ``example``:
    the ranges change the values, not the kernels that are timed).

    The caller's model is not modified: a copy is exported unless its parameters are already on the CPU in
    ``example``'s dtype, and its train/eval mode is restored.
    """
    check_available(device)
    example = example.cpu()
    onnx_model = export_onnx(on_cpu(model, example.dtype), example)
    if int8:
        from amc.onnx_quant import quantize_bytes

        onnx_model = quantize_bytes(onnx_model, [example])
    return session(onnx_model, threads, device)


def onnx_runner(
    model: nn.Module, example: torch.Tensor, threads: int, device: str = "cpu", int8: bool = False
) -> Callable[[], Any]:
    """One run of ``model``'s exported graph (quantized to INT8 with ``int8``) on ``example`` as a call without
    arguments, which :func:`amc.cost.latency_stats` times (on a ``cuda`` device: input and outputs bound on the GPU)."""
    sess = exported_session(model, example, threads, device, int8)
    x = example.detach().cpu().numpy()
    if not device.startswith("cuda"):
        return functools.partial(sess.run, None, {"input": x})
    index = _device_index(device)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("input", runtime().OrtValue.ortvalue_from_numpy(x, "cuda", index))
    for output in sess.get_outputs():
        binding.bind_output(output.name, "cuda", index)
    return functools.partial(sess.run_with_iobinding, binding)


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


__all__ = [
    "check_available",
    "export_onnx",
    "exported_session",
    "on_cpu",
    "onnx_runner",
    "runtime",
    "runtime_version",
    "session",
]
