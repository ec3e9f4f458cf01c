"""INT8 after pruning: post-training static quantization of a model through ONNX Runtime.

The model is exported to ONNX (float32, dynamic batch size), then quantized by
``onnxruntime.quantization.quantize_static``: QDQ format (QuantizeLinear / DequantizeLinear pairs around
every quantized operator, what TensorRT and ONNX Runtime's CPU and GPU providers read), per-channel symmetric
INT8 weights, UINT8 activations whose ranges are calibrated (min / max) on batches of the training split. The
quantized file is written beside the float one; both are measured by the same ONNX Runtime session settings
as the ``onnxruntime`` latency backend (:mod:`amc.onnx_latency`).

ONNX Runtime rather than PyTorch's PT2E flow: its output is the file users deploy (ONNX Runtime, TensorRT),
it runs INT8 kernels on the CPU here without a compiler, and the same session times the float and INT8
models. A PT2E model runs INT8 only once lowered (``torch.compile`` with the x86 Inductor backend); in eager
mode it simulates quantization in float32, so neither its size nor its latency would be the deployed one. (Chosen by
argument, not measured: with torch 2.14.1 PT2E lives in ``torchao``, not a dependency.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.cost import LatencyConfig, time_call
from amc.data import DataBundle
from amc.errors import ConfigError
from amc.files import atomic_path
from amc.onnx_quant import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    FLOAT_FILE,
    INT8_FILE,
    compact_names,
    quantize_file,
)

CALIBRATION_BATCHES = 4
"""Training batches of 64 images the INT8 activation ranges are calibrated on by default."""


@dataclass(frozen=True)
class Quantized:
    """A model exported to ONNX and its INT8 quantization.

    Attributes:
        float_path: The float32 ONNX file.
        int8_path: The INT8 (QDQ) ONNX file.
        calibration_images: Images the activation ranges were calibrated on.
    """

    float_path: Path
    int8_path: Path
    calibration_images: int

    def sizes(self) -> dict[str, int]:
        """Bytes of the two files: ``{"float": n, "int8": n}``."""
        return {"float": self.float_path.stat().st_size, "int8": self.int8_path.stat().st_size}


def export_float(model: nn.Module, example_inputs: torch.Tensor, path: Path) -> Path:
    """Writes ``model`` (in eval mode, on the CPU in float32; a copy when it is elsewhere) as ONNX with a dynamic batch
    size and compact names, atomically (:func:`amc.onnx_latency.export_onnx`)."""
    from amc.onnx_latency import export_onnx, on_cpu

    data = export_onnx(on_cpu(model, torch.float32), example_inputs[:1].cpu().float(), dynamic_batch=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return compact_names(path)


def quantize_int8(
    model: nn.Module,
    example_inputs: torch.Tensor,
    calibration: Sequence[torch.Tensor],
    out: Path,
    method: str = DEFAULT_CALIBRATION,
) -> Quantized:
    """Exports ``model`` to ``out/model.onnx`` and writes its INT8 quantization to ``out/model.int8.onnx``.

    Args:
        model: The float model (left unchanged).
        example_inputs: An input batch of the model's shape (its first image is used to export).
        calibration: Input batches the activation ranges are calibrated on (e.g. from the training split).
        out: Output directory.
        method: How activation ranges are calibrated (:data:`CALIBRATION_METHODS`).

    Raises:
        ConfigError: Without calibration batches, with an unknown method, or without onnxruntime.
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration {method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}")
    if not calibration:
        raise ConfigError("INT8 quantization needs calibration batches of inputs (--calib-batches >= 1)")
    out.mkdir(parents=True, exist_ok=True)
    float_path = export_float(model, example_inputs, out / FLOAT_FILE)
    int8_path = out / INT8_FILE
    with atomic_path(int8_path) as tmp:
        quantize_file(float_path, tmp, calibration, method)
    return Quantized(float_path, int8_path, sum(int(b.shape[0]) for b in calibration))


def calibration_inputs(data: DataBundle, batches: int = CALIBRATION_BATCHES, seed: int = 0) -> list[torch.Tensor]:
    """``batches`` batches of 64 training images drawn with ``seed``: what INT8 activation ranges are calibrated on."""
    from amc.train import calibration_batches

    if batches < 1:
        raise ConfigError(f"INT8 calibration needs at least one batch, got {batches}")
    return calibration_batches(data.loader("train", 64, shuffle=True, seed=seed + 3), batches)


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime session of the file at ``path``, set up as the ``onnxruntime`` latency backend's."""
    from amc.onnx_latency import session

    return session(path.read_bytes(), threads)


def onnx_top1(path: Path, loader: Iterable, threads: int = 1) -> float:
    """Top-1 accuracy (fraction) of the ONNX model at ``path`` on ``loader``'s (inputs, targets) batches."""
    sess = onnx_session(path, threads)
    correct = total = 0
    for inputs, targets in loader:
        (logits,) = sess.run(None, {"input": inputs.cpu().float().numpy()})
        correct += int((logits.argmax(1) == targets.numpy()).sum())
        total += int(targets.numel())
    if total == 0:
        raise ConfigError("the evaluation split is empty")
    return correct / total


def onnx_latency_ms(path: Path, input_shape: tuple[int, ...], config: LatencyConfig) -> float:
    """Median milliseconds of one run of the ONNX model at ``path`` (batch ``config.batch_size``, CPU)."""
    threads = config.effective_threads()
    sess = onnx_session(path, threads)
    x = torch.randn(config.batch_size, *input_shape).numpy()
    return time_call(lambda: sess.run(None, {"input": x}), threads, config.min_run_time).median_ms


def dense_float_bytes(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Bytes of ``model``'s float32 ONNX file, exported as :func:`export_float` exports (the reference size)."""
    with tempfile.TemporaryDirectory() as tmp:
        return export_float(model, example_inputs, Path(tmp) / FLOAT_FILE).stat().st_size


def int8_report(
    quantized: Quantized,
    dense: nn.Module,
    example_inputs: torch.Tensor,
    test_loader: Iterable,
    latency: LatencyConfig | None,
) -> dict[str, Any]:
    """``report.json``'s INT8 fields: both files' sizes, the compression against the dense float32 ONNX file,
    float and INT8 top-1 through ONNX Runtime and, with ``latency``, both files' latency under ONNX Runtime."""
    sizes = quantized.sizes()
    dense_bytes = dense_float_bytes(dense, example_inputs)
    report: dict[str, Any] = {
        "size_bytes": sizes,
        "dense_size_bytes": dense_bytes,
        "compression": dense_bytes / sizes["int8"],
        "onnx_top1": onnx_top1(quantized.float_path, test_loader),
        "int8_top1": onnx_top1(quantized.int8_path, test_loader),
        "int8_calibration_images": quantized.calibration_images,
        "int8_files": {"float": quantized.float_path.name, "int8": quantized.int8_path.name},
    }
    if latency is not None:
        shape = tuple(example_inputs.shape[1:])
        report["onnx_latency_ms"] = onnx_latency_ms(quantized.float_path, shape, latency)
        report["int8_latency_ms"] = onnx_latency_ms(quantized.int8_path, shape, latency)
    return report
