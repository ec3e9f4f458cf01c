"""ONNX Runtime's static INT8 quantization of an ONNX file, and compact names for ONNX files.

Only ``onnx``, ``onnxruntime`` and torch tensors: :mod:`amc.quantize` (the user-facing INT8 step) and the
``onnxruntime-int8`` latency backend (:mod:`amc.onnx_latency`) both use it. See :mod:`amc.quantize` for the
settings and why ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from amc.errors import ConfigError
from amc.files import atomic_path

FLOAT_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
"""Activation-range calibrations (ONNX Runtime's ``CalibrationMethod``): the observed min / max, the 99.999th
percentile of the absolute values, or the range minimising the KL divergence of the quantized histogram."""
DEFAULT_CALIBRATION = "minmax"


def compact_names(path: Path) -> Path:
    """Rewrites the ONNX file at ``path`` with short tensor names, no node names and no inferred shapes.

    The exporter and the quantizer name every tensor and node after its module path (``/layer1/layer1.0/conv1/
    Conv_output_0_QuantizeLinear``); on a small INT8 model these names are a third of the file. The graph's
    input and output keep their names, so the file is used exactly as before.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return short.setdefault(name, format(len(short), "x"))

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del graph.value_info[:]
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


class _Batches:
    """ONNX Runtime's CalibrationDataReader over fixed input batches."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._batches = iter([{"input": b.detach().cpu().float().numpy()} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_file(
    float_path: Path, int8_path: Path, calibration: Sequence[torch.Tensor], method: str = DEFAULT_CALIBRATION
) -> Path:
    """Quantizes the float ONNX file at ``float_path`` into ``int8_path`` as the module docstring says."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise ConfigError(f"INT8 quantization needs onnxruntime ({exc}); pip install onnx onnxruntime") from None

    with _quiet_root_logger():
        quantize_static(
            str(float_path),
            str(int8_path),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
        )
    return compact_names(int8_path)


def quantize_bytes(float_model: bytes, calibration: Sequence[torch.Tensor]) -> bytes:
    """An in-memory float ONNX model quantized to INT8 (for latency measurements of the INT8 model)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / FLOAT_FILE, Path(tmp) / INT8_FILE
        source.write_bytes(float_model)
        return quantize_file(source, target, calibration).read_bytes()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger ("consider pre-processing") and prints its histogram
    calibrations' progress on stdout: not the user's concern, and stdout may be a report piped to a file."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
