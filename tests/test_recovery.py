"""The APoZ criterion, distillation, weight rewinding and from-scratch retraining, on real models and digits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from amc.apoz import measure_apoz
from amc.checkpoint import load_model
from amc.data import DataConfig, load_data
from amc.errors import ConfigError
from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.pruning import prune_channels, widths_for
from amc.retrain import Retraining, retraining_for
from amc.train import Distillation, TrainConfig, finetune, recalibrate_bn
from tests.conftest import KEPT_EPOCH


def _vgg() -> tuple[torch.nn.Module, ModelGraph, torch.Tensor]:
    torch.manual_seed(0)
    spec = ModelSpec("vgg_small", 1, 10, 16)
    model = create_model(spec).eval()
    return model, ModelGraph(model, spec.example_inputs()), torch.randn(32, 1, 16, 16)


def test_apoz_removes_a_channel_that_is_always_zero_first() -> None:
    model, graph, x = _vgg()
    group = graph.group(graph.names[0])
    conv = model.get_submodule(group.modules[0])
    bn = next(
        m
        for n, m in model.named_modules()
        if n.startswith(group.modules[0].rsplit(".", 1)[0]) and isinstance(m, torch.nn.BatchNorm2d)
    )
    with torch.no_grad():
        bn.weight[5], bn.bias[5] = 0.0, -1.0  # channel 5 is -1 before the ReLU for every input: always zero after
    apoz = measure_apoz(model, x)
    bn_name = next(n for n, m in model.named_modules() if m is bn)
    assert apoz[bn_name][5] == 1.0 and apoz[bn_name].mean() < 0.9
    widths = {**graph.dense_widths(), group.name: group.channels - 1}
    result = prune_channels(model, graph, widths, "apoz", (x, torch.zeros(32, dtype=torch.long)))
    name = next(n for n, m in model.named_modules() if m is conv)
    kept = result.kept[name].outputs
    assert 5 not in kept and len(kept) == group.channels - 1


def test_apoz_refuses_a_group_that_reaches_no_relu() -> None:
    spec = ModelSpec("mobilenetv2_small", 1, 10, 16)
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    x = torch.randn(16, 1, 16, 16)
    linear = [g.name for g in graph if g.name.endswith(".6") or "block.6" in g.name]  # projection convs: no ReLU
    assert linear, graph.names
    widths = {**graph.dense_widths(), linear[0]: graph.group(linear[0]).channels // 2}
    with pytest.raises(ConfigError, match="ReLU-like activation"):
        prune_channels(model, graph, widths, "apoz", (x, torch.zeros(16, dtype=torch.long)))


def _loaders() -> tuple[DataLoader, DataLoader]:
    data = load_data(DataConfig("digits"))
    train = DataLoader(Subset(data.train, range(128)), batch_size=64, shuffle=False)
    return train, data.loader("val", 256)


def test_distillation_with_weight_zero_is_plain_finetuning(trained_resnet20: Path) -> None:
    dense = load_model(trained_resnet20 / "model.pt").model
    graph = ModelGraph(dense, torch.zeros(1, 1, 16, 16))
    pruned = prune_channels(dense, graph, widths_for(graph, {g: 0.5 for g in graph.names})).model
    train, _ = _loaders()
    plain, taught, half = copy.deepcopy(pruned), copy.deepcopy(pruned), copy.deepcopy(pruned)
    finetune(plain, train, epochs=1, progress=False)
    finetune(taught, train, epochs=1, progress=False, distill=Distillation(dense, weight=0.0))
    finetune(half, train, epochs=1, progress=False, distill=Distillation(dense, weight=0.5))
    plain_state, taught_state = plain.state_dict(), taught.state_dict()
    assert all(torch.equal(plain_state[k], taught_state[k]) for k in plain_state)
    assert not all(torch.equal(plain_state[k], v) for k, v in half.state_dict().items())
    with pytest.raises(ConfigError, match="weight"):
        Distillation(dense, weight=1.5)


def test_weight_rewinding_restores_the_kept_epoch_on_the_kept_channels(trained_resnet20: Path) -> None:
    dense = load_model(trained_resnet20 / "model.pt").model
    early = load_model(trained_resnet20 / f"epoch{KEPT_EPOCH}.pt").model
    example = torch.zeros(1, 1, 16, 16)
    graph = ModelGraph(dense, example)
    result = prune_channels(dense, graph, widths_for(graph, {g: 0.5 for g in graph.names}))
    rewind = retraining_for("rewind", trained_resnet20 / "model.pt")
    assert (rewind.method, rewind.start_epoch, rewind.epochs) == ("rewind", KEPT_EPOCH, 15 - KEPT_EPOCH)
    start = rewind.starting_model(result.model, result.history, example)
    for name, kept in result.kept.items():
        original = early.get_submodule(name).weight
        restored = start.get_submodule(name).weight
        if original.dim() == 4 and original.shape[1] == 1:  # depthwise: none in ResNet-20
            continue
        expected = original[list(kept.outputs)][:, list(kept.inputs)]
        assert torch.equal(restored, expected), name
        assert not torch.equal(restored, result.model.get_submodule(name).weight)  # not the final weights


def test_from_scratch_reinitialises_every_kept_weight(trained_resnet20: Path) -> None:
    dense = load_model(trained_resnet20 / "model.pt").model
    example = torch.zeros(1, 1, 16, 16)
    graph = ModelGraph(dense, example)
    result = prune_channels(dense, graph, widths_for(graph, {g: 0.3 for g in graph.names}))
    scratch = retraining_for("scratch", trained_resnet20 / "model.pt")
    assert scratch.epochs == 15 and scratch.schedule.lr == TrainConfig().lr
    start = scratch.starting_model(result.model, result.history, example)
    before = dict(result.model.named_parameters())
    for name, p in start.named_parameters():
        assert p.shape == before[name].shape
        if p.dim() > 1:  # conv / linear weights: every one drawn again
            assert (p != before[name]).float().mean() > 0.99, name


def test_rewinding_without_a_kept_epoch_says_how_to_get_one(tmp_path: Path, trained_resnet20: Path) -> None:
    import shutil

    shutil.copy(trained_resnet20 / "model.pt", tmp_path / "model.pt")
    report = json.loads((trained_resnet20 / "report.json").read_text())
    del report["kept_epoch"]
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(ConfigError, match="--keep-epoch"):
        retraining_for("rewind", tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="early epoch"):
        Retraining("rewind", TrainConfig())


def test_int8_quantization_is_deterministic_close_to_float_and_reported(tmp_path: Path, trained_resnet20: Path) -> None:
    from amc.cli import main
    from amc.quantize import calibration_inputs, onnx_top1, quantize_int8

    data = load_data(DataConfig("digits"))
    dense = load_model(trained_resnet20 / "model.pt").model
    graph = ModelGraph(dense, torch.zeros(1, 1, 16, 16))
    pruned = prune_channels(dense, graph, widths_for(graph, {g: 0.3 for g in graph.names})).model
    recalibrate_bn(pruned, calibration_inputs(data, 4, seed=0))
    example = torch.zeros(1, 1, 16, 16)
    first = quantize_int8(pruned, example, calibration_inputs(data, 2, seed=1), tmp_path / "a")
    again = quantize_int8(pruned, example, calibration_inputs(data, 2, seed=1), tmp_path / "b")
    assert first.int8_path.read_bytes() == again.int8_path.read_bytes()
    sizes = first.sizes()
    assert sizes["int8"] * 3 < sizes["float"]
    val = data.loader("val", 256)
    float_top1, int8_top1 = onnx_top1(first.float_path, val), onnx_top1(first.int8_path, val)
    assert float_top1 > 0.5 and abs(float_top1 - int8_top1) < 0.05

    out = tmp_path / "cli"
    assert main(["quantize", str(trained_resnet20 / "model.pt"), "--calib-batches", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "model.int8.onnx").stat().st_size == report["size_bytes"]["int8"]
    assert report["compression"] > 3 and report["int8_latency_ms"] > 0 and report["onnx_latency_ms"] > 0
    assert report["int8_top1"] > 0.5
