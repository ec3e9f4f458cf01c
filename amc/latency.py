"""A latency estimator the search can budget against: a lookup table of measured layer latencies.

The estimate of a width configuration (kept channels per group) is

    sum over conv / linear layers of table[layer](in channels, out channels) + residual(activations)

mirroring :meth:`amc.groups.ModelGraph.estimate`: a layer's channels follow the groups feeding its input
and the groups of its output (:meth:`~amc.groups.ModelGraph.layer_channels`). Each layer's entries are
measured in isolation with :func:`fastest_latency` (the fastest of at least 16 timed blocks, which
moves little with the load of a shared machine, unlike their median): a fresh module of
the same op, kernel, stride, padding, dilation, groups and bias on an input of the same spatial size,
followed by the layer's **tail**, the channel-wise modules the forward pass applies to its output before
anything else takes it (BatchNorm, activation, pooling: :data:`CHANNELWISE_TYPES`). The unit is measured
as the model executes it, so the cost of a BatchNorm or a max-pool follows the width of the layer it
belongs to (ResNet-18's stem max-pool alone is a sixth of its time at batch 1 on a CPU).

**Residual.** What the units do not cover (additions, functional ops, the framework's per-module
overhead) is measured, not modelled op by op: :data:`CALIBRATION` models are measured whole, the dense
one, the one physically pruned to the fewest channels the search allows and uniform steps in between
(every group the same fraction of the way from its fewest channels to dense); each minus the sum of its
layers' entries is a residual. The residual is a linear function of the layers' output activations
(output channels times output positions, summed) with a slope of at least zero, fitted to those models by
least squares on relative error. Part of it is a per-op overhead that pruning does not remove (at batch 1
on a CPU it is most of a small model's time), part scales with the activations; the intercept and slope
calibrate both. Fitting more than two models keeps one noisy whole-model measurement from shifting every
estimate; :attr:`BuildReport.calibration` says how well the fit matches them.

**Grid and interpolation.** Measuring every width pair would take thousands of entries, so each channel
axis of a layer is measured at ``config.grid`` widths spread evenly from the fewest channels the search
can choose (every group at ``max_ratio``) to the dense width, and the table interpolates bilinearly
between them (widths below the grid take its lowest entry). A depthwise conv has one axis (its input is
its output).

**Monotone by construction.** Before interpolating, each layer's grid is made non-decreasing along both
axes (:func:`monotone`: the mean of a cumulative maximum from the narrow end and a cumulative minimum from
the wide end); bilinear interpolation of such a grid is non-decreasing in each coordinate, the layer's
channels (and so the activations) are non-decreasing in every group's width, and the residual's slope is
not negative, so keeping more channels never lowers the estimate. The budget wall (:mod:`envs.budget`)
relies on this; its guarantee holds on the estimate, not on a later measurement. Real latencies on a CPU
are not monotone: some channel counts hit faster kernels (multiples of the vector width), and PyTorch
picks another convolution algorithm below a size (at batch 1, an input of at most 20480 elements), so a
narrower layer can take longer than a wider one; the monotone grid splits such a difference.

**Noise.** An entry measured in this build that breaks monotonicity against a neighbour by more than
:data:`OUTLIER_TOLERANCE` (it takes longer than a wider entry, or less than a narrower one) is measured
once more and keeps the smaller value (noise on a busy machine only adds time).

**Cache.** Entries are cached on disk per device fingerprint (CPU model, machine, torch version, thread
count, batch size, dtype, device, GPU name, latency backend and onnxruntime version) in
``<cache>/latency/<fingerprint hash>.json``, where
``<cache>`` is :func:`amc.baseline.default_cache_dir`; within a file each entry is keyed by op, input and
output channels, spatial size, kernel, stride, padding, dilation, groups, bias and tail, and each dense
model by its architecture hash and input shape (and a pruned calibration model also by its widths). A
second build on the same machine measures nothing; other thread counts, batch sizes, dtypes or devices
use another file. Concurrent builders merge their entries when they write (the last write of the same key
wins), and a file is replaced atomically.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.cost import LatencyConfig, latency_stats
from amc.errors import ConfigError
from amc.files import write_json_atomic
from amc.groups import CONV_TYPES, ModelGraph, is_depthwise
from amc.onnx_latency import runtime_version
from amc.policy import architecture_hash
from amc.progress import Progress
from amc.pruning import prune_channels

TABLE_VERSION = 2
"""Bumped when what an entry means changes; files of another version are not reused."""
LATENCY_DIR = "latency"
"""Subdirectory of the cache directory that holds the latency tables."""
OUTLIER_TOLERANCE = 0.25
"""An entry more than this fraction above a wider neighbour (or below a narrower one) is measured again."""
FLOOR_MS = 1e-6
"""Smallest estimate (a negative residual cannot make a configuration cost nothing or less)."""


@dataclass(frozen=True)
class Residual:
    """The residual as a non-decreasing linear function of the layers' output activations.

    Attributes:
        low_ms: Residual at the fewest-channel model's activations.
        low_activations: Its output activations (elements per image, summed over the layers).
        slope: Milliseconds per activation element (>= 0).
    """

    low_ms: float
    low_activations: float
    slope: float

    def __call__(self, activations: float) -> float:
        return self.low_ms + self.slope * max(activations - self.low_activations, 0.0)

    @classmethod
    def fit(cls, activations: Sequence[float], residuals: Sequence[float], measured: Sequence[float]) -> Residual:
        """Least squares of ``residual = a + slope * activations`` on relative error (each point weighted by
        ``1 / measured**2``, the whole model's time), with the slope held at zero or above.

        Args:
            activations: Output activations of each calibration model.
            residuals: Its measured time minus the sum of its layers' entries.
            measured: Its measured time (weights the fit).
        """
        x = torch.tensor(activations, dtype=torch.float64)
        y = torch.tensor(residuals, dtype=torch.float64)
        w = torch.tensor(measured, dtype=torch.float64).clamp_min(FLOOR_MS) ** -2
        w = w / w.sum()
        x_mean, y_mean = float((w * x).sum()), float((w * y).sum())
        spread = float((w * (x - x_mean) ** 2).sum())
        slope = max(float((w * (x - x_mean) * (y - y_mean)).sum()) / spread, 0.0) if spread > 0 else 0.0
        low = float(x.min())
        return cls(y_mean + slope * (low - x_mean), low, slope)


WHOLE_ROUNDS = 3
"""Measurements of each whole calibration model whose median the residual uses."""
CALIBRATION = 5
"""Whole models the residual is fitted to: the dense one, the fewest-channel one and uniform steps between."""

Measure = Callable[[nn.Module, tuple[int, ...], LatencyConfig], float]
"""Measures one forward pass of a module on inputs of a shape (batch excluded) and returns milliseconds."""


def fastest_latency(model: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig) -> float:
    """Milliseconds of the fastest of :func:`amc.cost.latency_stats`'s timed blocks (what every measurement
    of the latency target uses: table entries, calibration models, the best policy after a search)."""
    return latency_stats(model, input_shape, config).min_ms


# --------------------------------------------------------------------------- device fingerprint and cache
def cpu_model() -> str:
    """The CPU's model string (``/proc/cpuinfo``'s ``model name``, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_fingerprint(config: LatencyConfig) -> dict[str, Any]:
    """What a measured latency depends on besides the layer: machine, software and measurement settings."""
    gpu = None
    if config.device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(int(config.device.split(":")[1]) if ":" in config.device else 0)
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": config.effective_threads(),
        "batch_size": int(config.batch_size),
        "dtype": config.dtype,
        "device": config.device,
        "gpu": gpu,
        "backend": config.backend,
        "onnxruntime": runtime_version() if config.backend.startswith("onnxruntime") else None,
        "version": TABLE_VERSION,
    }


def cache_file(config: LatencyConfig, cache_dir: Path | None = None) -> Path:
    """The cache file of ``config``'s device fingerprint (``<cache>/latency/<hash>.json``)."""
    if cache_dir is None:
        from amc.baseline import default_cache_dir

        cache_dir = default_cache_dir()
    blob = json.dumps(device_fingerprint(config), sort_keys=True)
    return (
        Path(cache_dir).expanduser().resolve() / LATENCY_DIR / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
    )


class EntryCache:
    """The measured entries of one device fingerprint, on disk (see the module docstring).

    Args:
        config: Measurement settings (they choose the file).
        cache_dir: Cache directory (None: :func:`amc.baseline.default_cache_dir`).
    """

    def __init__(self, config: LatencyConfig, cache_dir: Path | None = None) -> None:
        self.fingerprint = device_fingerprint(config)
        self.path = cache_file(config, cache_dir)
        self.entries: dict[str, float] = {}
        self.models: dict[str, float] = {}
        self._new = 0
        self._read_into(self.entries, self.models)

    def _read_into(self, entries: dict[str, float], models: dict[str, float]) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            print(f"latency cache {self.path} is unreadable ({exc}); measuring again", file=sys.stderr)
            return
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            return
        for target, key in ((entries, "entries"), (models, "models")):
            for k, v in (data.get(key) or {}).items():
                if isinstance(v, (int, float)) and v > 0:
                    target.setdefault(str(k), float(v))

    def put(self, key: str, ms: float, model: bool = False) -> None:
        (self.models if model else self.entries)[key] = float(ms)
        self._new += 1

    def save(self) -> None:
        """Writes the entries, merged with what other builders wrote meanwhile (ours win on a shared key)."""
        if not self._new:
            return
        entries, models = {}, {}
        self._read_into(entries, models)
        entries.update(self.entries)
        models.update(self.models)
        write_json_atomic(
            self.path,
            {"fingerprint": self.fingerprint, "entries": dict(sorted(entries.items())), "models": models},
        )
        self._new = 0


# --------------------------------------------------------------------------- layers
CHANNELWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)
"""Modules a layer's tail may hold: they keep the channels of their one input (norms with per-channel
parameters, activations, pooling, dropout)."""


def tail_key(module: nn.Module) -> str:
    """What a tail module's latency depends on besides the channels (its type and settings)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__}(affine={module.affine})"
    if isinstance(module, nn.PReLU):
        return f"PReLU(shared={module.num_parameters == 1})"
    return repr(module)


def tail_module(module: nn.Module, channels: int) -> nn.Module:
    """A fresh copy of a tail module for ``channels`` channels."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module)(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.PReLU):
        return nn.PReLU(1 if module.num_parameters == 1 else channels)
    return copy.deepcopy(module)


@dataclass(frozen=True)
class LayerSpec:
    """One conv / linear module of the dense model and its tail, as the table measures them at other widths.

    The tail is the chain of channel-wise modules (:data:`CHANNELWISE_TYPES`: BatchNorm, activation,
    pooling) the forward pass applies to the layer's output before anything else takes it (another
    layer, an addition, a function): it runs on the layer's output channels, so the table measures the
    layer and its tail as one unit, as the model executes them.

    Attributes:
        name: Module name.
        op: ``conv1d`` / ``conv2d`` / ``conv3d`` / ``linear``.
        extent: Input extent besides batch and channels (spatial size of a conv, token dims of a linear).
        depthwise: One input and one output channel per group (its input channels are its output channels).
        groups: ``groups`` of a grouped (not depthwise) conv, else 1.
        params: Kernel, stride, padding, dilation, bias and padding mode (conv) or bias (linear).
        tail: The channel-wise modules applied to its output (copied from the model, in order; specs compare
            by their :func:`tail_key`, not by the module objects).
    """

    name: str
    op: str
    extent: tuple[int, ...]
    depthwise: bool
    groups: int
    params: tuple[tuple[str, Any], ...]
    tail: tuple[nn.Module, ...] = field(default=(), compare=False)
    tail_keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, module: nn.Module, input_shape: Sequence[int], tail: Sequence[nn.Module] = ()) -> LayerSpec:
        tail = tuple(copy.deepcopy(m) for m in tail)
        keys = tuple(tail_key(m) for m in tail)
        if isinstance(module, nn.Linear):
            bias = (("bias", module.bias is not None),)
            return cls(name, "linear", tuple(input_shape[:-1]), False, 1, bias, tail, keys)
        if not isinstance(module, CONV_TYPES):
            raise ConfigError(f"module {name!r} ({type(module).__name__}) is not a conv or linear layer")
        depthwise = is_depthwise(module)
        params = (
            ("kernel", tuple(module.kernel_size)),
            ("stride", tuple(module.stride)),
            ("padding", module.padding if isinstance(module.padding, str) else tuple(module.padding)),
            ("dilation", tuple(module.dilation)),
            ("bias", module.bias is not None),
            ("padding_mode", module.padding_mode),
        )
        op = f"conv{len(module.kernel_size)}d"
        groups = 1 if depthwise else module.groups
        return cls(name, op, tuple(input_shape[1:]), depthwise, groups, params, tail, keys)

    def key(self, cin: int, cout: int) -> str:
        """The cache key of this layer (and its tail) at ``cin`` input and ``cout`` output channels."""
        groups = cin if self.depthwise else self.groups
        extra = ";".join(f"{k}={v}" for k, v in self.params)
        key = f"{self.op}|in={cin}|out={cout}|extent={self.extent}|groups={groups}|{extra}"
        return key + (f"|tail={','.join(self.tail_keys)}" if self.tail_keys else "")

    def build(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A fresh module (the layer, followed by its tail) at ``cin`` / ``cout`` channels and its input shape
        (batch excluded)."""
        layer, shape = self._layer(cin, cout)
        if not self.tail:
            return layer, shape
        return nn.Sequential(layer, *(tail_module(m, cout) for m in self.tail)), shape

    def _layer(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        p = dict(self.params)
        if self.op == "linear":
            return nn.Linear(cin, cout, bias=p["bias"]), (*self.extent, cin)
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[self.op]
        module = conv(
            cin,
            cout,
            p["kernel"],
            p["stride"],
            p["padding"],
            p["dilation"],
            cin if self.depthwise else self.groups,
            p["bias"],
            p["padding_mode"],
        )
        return module, (cin, *self.extent)


def axis_points(lo: int, hi: int, points: int, step: int = 1) -> list[int]:
    """``points`` widths from ``lo`` to ``hi`` (both included), evenly spread, multiples of ``step``."""
    if hi <= lo:
        return [hi]
    values = {lo, hi}
    for i in range(1, points - 1):
        v = int(round((lo + (hi - lo) * i / (points - 1)) / step)) * step
        values.add(min(max(v, lo), hi))
    return sorted(values)


def _locate(points: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and its fraction between them (clamped to the grid)."""
    if len(points) == 1 or x <= points[0]:
        return 0, 0, 0.0
    if x >= points[-1]:
        return len(points) - 1, len(points) - 1, 0.0
    i = bisect.bisect_right(points, x) - 1
    return i, i + 1, (x - points[i]) / (points[i + 1] - points[i])


@dataclass(frozen=True)
class LayerTable:
    """Monotone latency grid of one layer and its bilinear interpolation.

    Attributes:
        spec: The layer.
        ins: Input-channel grid (ascending; for a depthwise conv equal to ``outs``).
        outs: Output-channel grid (ascending).
        values: ``values[i][j]``: milliseconds at ``ins[i]`` / ``outs[j]`` (a depthwise conv: one row,
            ``values[0][j]`` at ``outs[j]`` channels), non-decreasing along both axes.
    """

    spec: LayerSpec
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    values: tuple[tuple[float, ...], ...]

    def __call__(self, cin: int, cout: int) -> float:
        j0, j1, u = _locate(self.outs, cout)
        if self.spec.depthwise:
            row = self.values[0]
            return row[j0] + u * (row[j1] - row[j0])
        i0, i1, t = _locate(self.ins, cin)
        v = self.values
        low = v[i0][j0] + u * (v[i0][j1] - v[i0][j0])
        high = v[i1][j0] + u * (v[i1][j1] - v[i1][j0])
        return low + t * (high - low)

    def grid(self) -> list[tuple[int, int]]:
        """The (input, output) channel pairs the table measures."""
        if self.spec.depthwise:
            return [(c, c) for c in self.outs]
        return [(i, o) for i in self.ins for o in self.outs]


def monotone(values: list[list[float]]) -> list[list[float]]:
    """``values`` made non-decreasing in each index: the mean of the smallest non-decreasing grid above it
    (a cumulative maximum from the narrow end) and the largest one below it (a cumulative minimum from the
    wide end). A grid that is monotone already stays as it is; where a narrower entry took longer than a
    wider one, both meet in the middle instead of the wider one rising to the narrower one's time."""
    rows = len(values)
    upper = [list(row) for row in values]
    for i in range(rows):
        for j in range(len(upper[i])):
            if i:
                upper[i][j] = max(upper[i][j], upper[i - 1][j])
            if j:
                upper[i][j] = max(upper[i][j], upper[i][j - 1])
    lower = [list(row) for row in values]
    for i in reversed(range(rows)):
        for j in reversed(range(len(lower[i]))):
            if i + 1 < rows:
                lower[i][j] = min(lower[i][j], lower[i + 1][j])
            if j + 1 < len(lower[i]):
                lower[i][j] = min(lower[i][j], lower[i][j + 1])
    return [[(u + v) / 2 for u, v in zip(up, low, strict=True)] for up, low in zip(upper, lower, strict=True)]


def outliers(values: list[list[float]], tolerance: float = OUTLIER_TOLERANCE) -> set[tuple[int, int]]:
    """Grid cells that break monotonicity against a neighbour by more than ``tolerance``.

    A cell is flagged when it takes longer than ``1 + tolerance`` times a wider neighbour's time, or less
    than a narrower neighbour's time divided by ``1 + tolerance`` (both cells of such a pair are flagged).
    """
    flagged: set[tuple[int, int]] = set()
    rows = len(values)
    for i in range(rows):
        for j in range(len(values[i])):
            for ni, nj in ((i + 1, j), (i, j + 1)):
                if ni < rows and nj < len(values[ni]) and values[i][j] > (1 + tolerance) * values[ni][nj]:
                    flagged.update({(i, j), (ni, nj)})
    return flagged


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class BuildReport:
    """What building a latency table cost and found.

    Attributes:
        entries: Distinct table entries (measured or cached) plus the dense model.
        measured: Entries measured in this build (0 when everything came from the cache).
        cached: Entries read from the cache.
        remeasured: Outliers measured a second time.
        seconds: Wall time of the build.
        cache_path: The cache file.
        dense_ms: The dense model measured whole.
        residual_ms: ``dense_ms`` minus the sum of the layers' entries at dense widths.
        fewest_ms: The model pruned to the fewest channels, measured whole.
        fewest_residual_ms: ``fewest_ms`` minus the sum of its layers' entries.
        calibration: ``(measured, estimated)`` milliseconds of each whole model the residual was fitted to,
            from the fewest channels to dense.
    """

    entries: int
    measured: int
    cached: int
    remeasured: int
    seconds: float
    cache_path: str
    dense_ms: float
    residual_ms: float
    fewest_ms: float
    fewest_residual_ms: float
    calibration: tuple[tuple[float, float], ...] = ()

    @property
    def calibration_error(self) -> float:
        """Largest ``|estimated - measured| / measured`` over the calibration models (0 without any)."""
        return max((abs(e - m) / m for m, e in self.calibration), default=0.0)

    def line(self) -> str:
        return (
            f"latency table: {self.entries} entries ({self.measured} measured, {self.cached} from the cache, "
            f"{self.remeasured} re-measured as outliers) in {self.seconds:.1f}s; dense {self.dense_ms:.3f} ms "
            f"(residual {self.residual_ms:.3f}), fewest channels {self.fewest_ms:.3f} ms (residual "
            f"{self.fewest_residual_ms:.3f}); {len(self.calibration)} whole models fitted within "
            f"{self.calibration_error:.1%}; cache {self.cache_path}"
        )


@dataclass
class LatencyTable:
    """Estimated latency (milliseconds per forward pass) of any width configuration of a traced model.

    Build it with :meth:`build`; :meth:`estimate` is monotone in every group's width.

    Attributes:
        graph: The traced dense model.
        config: Measurement settings.
        layers: Module name -> its table.
        activations: Module name -> output elements per output channel (what :class:`Residual` sums).
        residual: The part the layers do not cover (see the module docstring).
        report: What the build cost.
    """

    graph: ModelGraph
    config: LatencyConfig
    layers: dict[str, LayerTable]
    activations: dict[str, int]
    residual: Residual
    report: BuildReport
    check: Any = None
    """The check against whole models measured now (:class:`amc.latency_check.TableCheck`; None until checked)."""
    _memo: dict[tuple[int, ...], float] = field(default_factory=dict, repr=False)

    def estimate(self, widths: Mapping[str, int]) -> float:
        """Estimated milliseconds of the model with each group cut to ``widths[name]`` (others dense)."""
        key = tuple(int(widths.get(g.name, g.channels)) for g in self.graph.groups)
        if key not in self._memo:
            channels = self.graph.layer_channels(widths)
            total = sum(table(*channels[name]) for name, table in self.layers.items())
            total += self.residual(_activations(channels, self.activations))
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[key] = max(total, FLOOR_MS)
        return self._memo[key]

    @classmethod
    def build(
        cls,
        model: nn.Module,
        graph: ModelGraph,
        config: LatencyConfig | None = None,
        fewest: Mapping[str, int] | None = None,
        cache_dir: Path | None = None,
        progress: bool = True,
        measure: Measure | None = None,
        desc: str | None = None,
        refresh: bool = False,
    ) -> LatencyTable:
        """Measures (or reads from the cache) every entry the estimate needs.

        Args:
            model: The dense model ``graph`` was traced from (not modified).
            graph: Its traced groups.
            config: Measurement settings (None: :class:`amc.cost.LatencyConfig`); ``config.grid`` widths per
                channel axis.
            fewest: The fewest channels the search gives each group (the grid's low end; None: each
                group's smallest multiple).
            cache_dir: Cache directory (None: :func:`amc.baseline.default_cache_dir`).
            progress: Show progress and print the build's cost on stderr.
            measure: Measures one module (None: :func:`fastest_latency`; tests count calls with their own).
            desc: What the progress line calls the build.
            refresh: Measure every entry and whole model again instead of reading the cache (the new figures
                replace the cached ones).

        Raises:
            ConfigError: when the device does not exist on this machine.
        """
        config = config if config is not None else LatencyConfig()
        config.check_available()
        measure = measure or fastest_latency
        start = time.monotonic()
        cache = EntryCache(config, cache_dir)
        if refresh:
            cache.entries.clear()
            cache.models.clear()
        low = dict(fewest) if fewest is not None else {g.name: _smallest(g.channels, g.multiple) for g in graph}
        steps = calibration_widths(graph, low)
        lo_channels = graph.layer_channels(low)
        hi_channels = graph.layer_channels(graph.dense_widths())
        specs, per_channel = _layer_specs(model, graph, list(hi_channels))
        grids: dict[str, tuple[list[int], list[int]]] = {}
        for name, spec in specs.items():
            (lo_in, lo_out), (hi_in, hi_out) = lo_channels[name], hi_channels[name]
            step = spec.groups
            outs = axis_points(lo_out, hi_out, config.grid, step)
            ins = outs if spec.depthwise else axis_points(lo_in, hi_in, config.grid, step)
            grids[name] = (ins, outs)
        keys = {spec.key(i, o): (spec, i, o) for name, spec in specs.items() for i, o in _pairs(spec, *grids[name])}
        shape = tuple(graph.example_inputs.shape[1:])
        model_key = f"model|{architecture_hash(model)}|{shape}"
        dense = graph.dense_widths()
        whole_keys = [model_key if w == dense else f"{model_key}|widths={_widths_hash(w)}" for w in steps]
        fresh: set[str] = set()
        counts = {"measured": 0, "cached": 0, "remeasured": 0}

        def entry(key: str, spec: LayerSpec, cin: int, cout: int) -> None:
            if key in cache.entries:
                counts["cached"] += 1
                return
            module, shape = spec.build(cin, cout)
            cache.put(key, measure(module, shape, config))
            fresh.add(key)
            counts["measured"] += 1

        label = desc or f"latency table {type(model).__name__}"

        def whole(key: str, make: Callable[[], nn.Module]) -> None:
            if key in cache.models:
                counts["cached"] += 1
            else:  # the median of WHOLE_ROUNDS: one whole-model figure sets the residual of every estimate
                whole_model = make()
                cache.put(
                    key, statistics.median(measure(whole_model, shape, config) for _ in range(WHOLE_ROUNDS)), model=True
                )
                counts["measured"] += 1

        with Progress(len(keys) + len(steps), label, "entry", "entries", enabled=progress) as bar:
            for done, (key, (spec, cin, cout)) in enumerate(keys.items(), start=1):
                entry(key, spec, cin, cout)
                bar.update()
                if done % 50 == 0:
                    cache.save()  # an interrupted build keeps what it measured
            for key, widths in zip(whole_keys, steps, strict=True):
                whole(
                    key, lambda widths=widths: model if widths == dense else prune_channels(model, graph, widths).model
                )
                bar.update()
        remeasured: set[str] = set()
        for name, spec in specs.items():
            ins, outs = grids[name]
            raw = _grid_values(spec, ins, outs, cache.entries)
            for i, j in sorted(outliers(raw)):
                cin, cout = (outs[j], outs[j]) if spec.depthwise else (ins[i], outs[j])
                key = spec.key(cin, cout)
                if key in fresh and key not in remeasured:
                    module, shape = spec.build(cin, cout)
                    cache.entries[key] = min(cache.entries[key], measure(module, shape, config))
                    remeasured.add(key)
        cache.save()
        layers = {}
        for name, spec in specs.items():
            ins, outs = grids[name]
            values = monotone(_grid_values(spec, ins, outs, cache.entries))
            layers[name] = LayerTable(spec, tuple(ins), tuple(outs), tuple(tuple(r) for r in values))
        measured = [cache.models[key] for key in whole_keys]
        residual, sums, estimated = _calibrate(graph, layers, per_channel, steps, measured)
        report = BuildReport(
            entries=len(keys) + len(steps),
            measured=counts["measured"],
            cached=counts["cached"],
            remeasured=len(remeasured),
            seconds=time.monotonic() - start,
            cache_path=str(cache.path),
            dense_ms=measured[-1],
            residual_ms=measured[-1] - sums[-1],
            fewest_ms=measured[0],
            fewest_residual_ms=measured[0] - sums[0],
            calibration=tuple(zip(measured, estimated, strict=True)),
        )
        if progress:
            print(report.line(), file=sys.stderr, flush=True)
        return cls(graph, config, layers, per_channel, residual, report)


def calibration_widths(graph: ModelGraph, fewest: Mapping[str, int], count: int = CALIBRATION) -> list[dict[str, int]]:
    """``count`` width configurations from ``fewest`` to dense (both included, duplicates dropped): every group
    the same fraction of the way, rounded to its :attr:`~amc.groups.PrunableGroup.multiple`."""
    steps: list[dict[str, int]] = []
    for k in range(count):
        fraction = k / max(count - 1, 1)
        widths = {}
        for g in graph:
            lo = int(fewest.get(g.name, g.channels))
            w = lo + int(round(fraction * (g.channels - lo) / g.multiple)) * g.multiple
            widths[g.name] = min(max(w, lo), g.channels)
        if widths not in steps:
            steps.append(widths)
    return steps


def _calibrate(
    graph: ModelGraph,
    layers: Mapping[str, LayerTable],
    per_channel: Mapping[str, int],
    steps: Sequence[Mapping[str, int]],
    measured: Sequence[float],
) -> tuple[Residual, list[float], list[float]]:
    """The residual fitted to whole models at ``steps`` widths that took ``measured`` ms, the sum of each one's
    layer entries and its estimate."""
    channels = [graph.layer_channels(w) for w in steps]
    sums = [sum(table(*ch[name]) for name, table in layers.items()) for ch in channels]
    activations = [_activations(ch, per_channel) for ch in channels]
    residual = Residual.fit(activations, [m - t for m, t in zip(measured, sums, strict=True)], measured)
    estimated = [max(t + residual(a), FLOOR_MS) for t, a in zip(sums, activations, strict=True)]
    return residual, sums, estimated


def _widths_hash(widths: Mapping[str, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(widths.items())).encode()).hexdigest()[:16]


def _activations(channels: Mapping[str, tuple[int, int]], per_channel: Mapping[str, int]) -> float:
    return float(sum(channels[name][1] * n for name, n in per_channel.items()))


def _smallest(channels: int, multiple: int) -> int:
    return multiple if channels % multiple == 0 else channels


def _pairs(spec: LayerSpec, ins: list[int], outs: list[int]) -> list[tuple[int, int]]:
    return [(c, c) for c in outs] if spec.depthwise else [(i, o) for i in ins for o in outs]


def _grid_values(spec: LayerSpec, ins: list[int], outs: list[int], entries: Mapping[str, float]) -> list[list[float]]:
    if spec.depthwise:
        return [[entries[spec.key(c, c)] for c in outs]]
    return [[entries[spec.key(i, o)] for o in outs] for i in ins]


@dataclass(frozen=True)
class _Call:
    """One call of a leaf module in a forward pass: the module, its first input and its output."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None


@torch.no_grad()
def _layer_specs(model: nn.Module, graph: ModelGraph, names: list[str]) -> tuple[dict[str, LayerSpec], dict[str, int]]:
    """The :class:`LayerSpec` of each named module (with the input shape it sees in a forward pass and its
    tail), and its output elements per output channel."""
    calls = _leaf_calls(model, graph.example_inputs)
    first: dict[str, int] = {}
    for i, call in enumerate(calls):
        first.setdefault(call.name, i)
    missing = [n for n in names if n not in first or calls[first[n]].input is None or calls[first[n]].output is None]
    if missing:
        raise ConfigError(f"modules {missing[:3]} are not called in a forward pass; their latency cannot be measured")
    specs, per_channel = {}, {}
    for name in names:
        call = calls[first[name]]
        assert call.input is not None and call.output is not None
        out = call.output
        channel_dim = out.dim() - 1 if isinstance(call.module, nn.Linear) else 1
        per_channel[name] = out[:1].numel() // max(int(out.shape[channel_dim]), 1)
        tail = _tail(calls, first[name], channel_dim)
        specs[name] = LayerSpec.of(name, call.module, tuple(call.input.shape[1:]), tail)
    return specs, per_channel


def _leaf_calls(model: nn.Module, inputs: torch.Tensor) -> list[_Call]:
    """Every call of a leaf module in one forward pass, in order (the tensors are kept, so none is freed
    and no object identity is reused)."""
    calls: list[_Call] = []

    def hook(mod: nn.Module, args: tuple, out: object, name: str) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        calls.append(_Call(name, mod, first, out if isinstance(out, torch.Tensor) else None))

    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: hook(mod, args, out, name))
        for name, m in model.named_modules()
        if not any(True for _ in m.children())
    ]
    was_training = model.training
    try:
        model.eval()
        model(inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _tail(calls: Sequence[_Call], start: int, channel_dim: int) -> list[nn.Module]:
    """The channel-wise modules applied, one after the other, to the output of ``calls[start]``: each the next
    leaf module called on the previous one's output (an in-place one returns its input, so the module after
    it takes the same tensor), as long as it keeps the channels."""
    tail: list[nn.Module] = []
    current, index = calls[start].output, start
    while current is not None:
        taker = next((i for i in range(index + 1, len(calls)) if calls[i].input is current), None)
        if taker is None:
            break
        call = calls[taker]
        out = call.output
        if not isinstance(call.module, CHANNELWISE_TYPES) or out is None or out.dim() != current.dim():
            break
        if out.shape[channel_dim] != current.shape[channel_dim]:
            break
        tail.append(call.module)
        current, index = out, taker
    return tail


__all__ = [
    "BuildReport",
    "EntryCache",
    "LatencyTable",
    "LayerSpec",
    "LayerTable",
    "Residual",
    "axis_points",
    "cache_file",
    "calibration_widths",
    "cpu_model",
    "device_fingerprint",
    "fastest_latency",
    "monotone",
    "outliers",
]
