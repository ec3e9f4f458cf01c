"""The onnxruntime latency backend: the exported graph computes what the model computes, its measurements
feed the latency table, the after-search check and ``amc prune --report``, and bad settings are clear errors.

Timings are never compared with each other or with a constant (the machine may be busy): only that they are
positive and finite. Measurements use a very short ``min_run_time`` and a coarse grid to stay cheap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.records import SearchConfig
from agents.search import Search
from amc.cost import LATENCY_BACKENDS, LatencyConfig, latency_stats, measure_latency
from amc.data import DataConfig
from amc.engine import Workspace, build_workspace
from amc.errors import ConfigError
from amc.latency import LatencyTable, cache_file, device_fingerprint
from amc.onnx_latency import exported_session, runtime, runtime_version
from amc.pruning import prune_channels, widths_for
from envs import EnvConfig

pytest.importorskip("onnxruntime")

QUICK = LatencyConfig(min_run_time=0.002, grid=3, backend="onnxruntime")
TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
MODELS = ("resnet20", "mobilenetv2_small")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every latency table of this module goes to a temporary cache directory, never the user's."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def workspaces() -> dict[str, Workspace]:
    return {name: build_workspace(name, DataConfig("digits")) for name in MODELS}


def _small_conv_model() -> nn.Module:
    """Conv, BatchNorm (with running statistics far from the identity), ReLU, pooling and a classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return model


def _matches_torch(model: nn.Module, example: torch.Tensor) -> None:
    """The exported graph's output under ONNX Runtime is the model's (in eval mode) up to float rounding."""
    (out,) = exported_session(model, example, threads=1).run(None, {"input": example.numpy()})
    with torch.no_grad():
        expected = model.eval()(example).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


# --------------------------------------------------------------------------- the measurement
def test_exported_graph_computes_the_models_output_and_is_timed() -> None:
    model = _small_conv_model().train()  # in training mode: the measurement exports it in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = LatencyConfig(batch_size=4, min_run_time=0.01, backend="onnxruntime")
    stats = latency_stats(model, (3, 12, 12), config)
    assert math.isfinite(stats.median_ms) and stats.median_ms > 0 and stats.iqr_ms >= 0 and stats.blocks >= 1
    assert model.training, "the caller's model keeps its mode"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "and its weights and statistics"
    _matches_torch(model, torch.randn(4, 3, 12, 12))


@pytest.mark.parametrize("model", MODELS)
def test_dense_and_pruned_models_export_faithfully(model: str, workspaces: dict[str, Workspace]) -> None:
    ws = workspaces[model]
    example = torch.randn(2, *ws.spec.input_shape)
    _matches_torch(ws.model, example)
    pruned = prune_channels(ws.model, ws.graph, widths_for(ws.graph, {g.name: 0.5 for g in ws.graph})).model
    _matches_torch(pruned, example)
    assert measure_latency(pruned, tuple(ws.spec.input_shape), QUICK) > 0


# --------------------------------------------------------------------------- the latency table
def test_table_under_onnxruntime_is_monotone_and_cached_apart_from_torch(
    workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    ws = workspaces["resnet20"]
    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False)
    assert table.report.measured > 0 and table.report.dense_ms > 0
    for layer in table.layers.values():
        values = np.array(layer.values)
        assert (values > 0).all()
        assert (np.diff(values, axis=1) >= 0).all() and (np.diff(values, axis=0) >= 0).all()
    measured, estimated = table.report.calibration[-1]  # the dense model, one of those the residual is fitted to
    assert measured == table.report.dense_ms and estimated == pytest.approx(table.estimate(ws.graph.dense_widths()))
    torch_config = LatencyConfig(min_run_time=QUICK.min_run_time, grid=QUICK.grid)
    assert cache_file(QUICK, tmp_path) != cache_file(torch_config, tmp_path)
    fingerprint = device_fingerprint(QUICK)
    assert fingerprint["backend"] == "onnxruntime" and fingerprint["onnxruntime"] == runtime_version()
    assert device_fingerprint(torch_config)["backend"] == "torch"
    again = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False)
    assert again.report.measured == 0 and again.layers == table.layers


def test_int8_backend_times_the_quantized_graph_and_keeps_its_own_table(trained_resnet20: Path, tmp_path: Path) -> None:
    import onnx

    from amc.onnx_latency import export_onnx
    from amc.onnx_quant import quantize_bytes

    ws = build_workspace("resnet20", DataConfig("digits"), str(trained_resnet20 / "model.pt"))
    int8 = LatencyConfig(min_run_time=0.002, grid=3, backend="onnxruntime-int8")
    example = torch.stack([ws.data.val[i][0] for i in range(8)])  # real digits: the trained model is sure of them
    with torch.no_grad():
        quantized = quantize_bytes(export_onnx(ws.model, example), [example])
    ops = {node.op_type for node in onnx.load_from_string(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = exported_session(ws.model, example, 1, int8=True)
    (output,) = session.run(None, {"input": example.numpy()})
    with torch.no_grad():
        reference = ws.model(example).numpy()
    assert (output.argmax(1) == reference.argmax(1)).mean() >= 0.75  # an INT8 approximation of the same model
    assert measure_latency(ws.model, tuple(ws.spec.input_shape), int8) > 0
    assert cache_file(int8, tmp_path) != cache_file(QUICK, tmp_path)
    with pytest.raises(ConfigError, match="onnxruntime-int8"):
        LatencyConfig(backend="onnxruntime-int8", device="cuda")


# --------------------------------------------------------------------------- bad settings
def test_unknown_backend_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend 'tvm' is unknown; use one of torch, onnxruntime"):
        LatencyConfig(backend="tvm")
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  target_metric: latency\n  latency: {backend: tvm}\n")
    with pytest.raises(ConfigError, match=r"env\.latency\.backend 'tvm' is unknown"):
        SearchConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="bfloat16"):
        LatencyConfig(dtype="bfloat16", backend="onnxruntime")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in runtime().get_available_providers(), reason="this onnxruntime has a CUDA provider"
)
def test_onnxruntime_on_cuda_without_its_provider_is_refused(workspaces: dict[str, Workspace]) -> None:
    config = LatencyConfig(device="cuda", backend="onnxruntime")  # loads: it may be meant for another machine
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        config.check_available()
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        measure_latency(workspaces["resnet20"].model, (3, 16, 16), config)


def test_cli_backend_choices_are_the_configs() -> None:
    from amc.cli import options

    assert options.LATENCY_BACKEND_NAMES == LATENCY_BACKENDS


# --------------------------------------------------------------------------- where the backend is used
def test_latency_search_under_onnxruntime_measures_the_best_policy(tmp_path: Path) -> None:
    env = EnvConfig(model="resnet20", target_metric="latency", target_ratio=0.95, max_ratio=0.9, latency=QUICK, **TINY)
    config = SearchConfig(env=env, agent="random", episodes=2, workers=0, checkpoint_every=1)
    Search(config, tmp_path / "s", progress=False).run()
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    best = summary["best"]
    assert best["latency_ms_measured"] > 0 and summary["dense_latency_ms_measured"] > 0
    assert best["latency_ms_estimated"] <= 0.95 * summary["dense_latency_ms_estimated"] + 1e-12
    files = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["fingerprint"]["backend"] == "onnxruntime"


def test_prune_report_measures_with_the_chosen_backend(tmp_path: Path) -> None:
    from amc.cli import main

    out = tmp_path / "pruned"
    args = ["prune", "--model", "resnet20", "--data", "digits", "--uniform", "0.5", "--finetune-epochs", "0"]
    with pytest.warns(UserWarning, match="no --checkpoint"):
        assert main([*args, "--latency-backend", "onnxruntime", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["latency_backend"] == "onnxruntime"
    assert report["latency_ms"] > 0 and report["dense_latency_ms"] > 0
    with pytest.raises(SystemExit) as exc:
        main([*args, "--latency-backend", "tvm", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
