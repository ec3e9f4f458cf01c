"""Bringing any model: tracing is time-limited, no policy leaves a layer without channels, sliced channels shrink in
step or are frozen with the reason."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import amc
from agents.search import SearchConfig, run_search
from amc.checkpoint import load_model, save_model
from amc.cli import main
from amc.cost import LatencyConfig, count_cost
from amc.data import DataConfig, load_data
from amc.engine import cost_report, prune_with_policy, workspace_for
from amc.errors import ConfigError, TraceError, TraceTimeoutError
from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.policy import load_policy
from amc.pruning import ChannelPruner, build_graph, prune_channels, widths_for
from amc.time_limit import TRACE_TIMEOUT_ENV, TimeLimit, trace_timeout


def _load_snippet(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Sliced(nn.Module):
    """A conv whose outputs are cut in two for two branches (CSPNet / GhostNet style), concatenated again.

    Args:
        fixed: Slice with a fixed size (``torch.split(x, 4)``), which breaks once pruned, instead of ``chunk(2)``.
        uneven: Slice 3 / 5 instead of 4 / 4.
    """

    def __init__(self, fixed: bool = False, uneven: bool = False) -> None:
        super().__init__()
        self.fixed, self.uneven = fixed, uneven
        first = 3 if uneven else 4
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(first, 6, 1)
        self.right = nn.Conv2d(8 - first, 6, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stem(x))
        if self.uneven:
            a, b = x[:, :3], x[:, 3:]
        elif self.fixed:
            a, b = torch.split(x, 4, dim=1)
        else:
            a, b = x.chunk(2, dim=1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def test_tracing_past_its_time_limit_fails_with_the_projects_error() -> None:
    model = create_model(ModelSpec("resnet56", 3, 10, 16)).eval()
    with pytest.raises(TraceTimeoutError, match=rf"tracing .*longer than.*\${TRACE_TIMEOUT_ENV}"):
        ModelGraph(model, torch.zeros(1, 3, 16, 16), trace_timeout=1e-3)
    graph = ModelGraph(model, torch.zeros(1, 3, 16, 16), trace_timeout=0)  # 0: no limit
    assert len(graph) > 0


def test_time_limit_reads_its_variable_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_TIMEOUT_ENV, "7.5")
    assert trace_timeout() == 7.5 and TimeLimit("x").seconds == 7.5
    monkeypatch.setenv(TRACE_TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=TRACE_TIMEOUT_ENV):
        trace_timeout()


def test_sliced_channels_shrink_in_step_and_no_slice_is_emptied() -> None:
    model = _Sliced().eval()
    with torch.no_grad():
        model.stem.weight[:4] *= 100  # the first slice is the most important: by magnitude alone the second empties
    x = torch.randn(2, 3, 8, 8)
    graph = build_graph(model, x)
    assert graph.group("stem").multiple == 2 and not graph.group("stem").frozen
    for ratio in (0.5, 0.95):
        widths = widths_for(graph, {g.name: ratio for g in graph})
        pruned = prune_channels(model, graph, widths).model
        assert pruned.left.in_channels == pruned.right.in_channels >= 1
        assert count_cost(pruned, x) == graph.estimate(widths)
    # widths of zero, from any source, are clamped to one channel per slice
    pruned = ChannelPruner(model, graph).prune({g.name: 0 for g in graph}).model
    assert (pruned.stem.out_channels, pruned.left.out_channels, pruned.left.in_channels) == (2, 1, 1)
    assert pruned(x).shape == (2, 10)


def test_a_group_whose_cut_would_empty_a_module_is_frozen_and_the_rest_pruned() -> None:
    """timm's MambaOut: cutting a gated MLP's hidden group to its fewest channels leaves the block's conv with none
    (a slice the tracing does not show): that group stays dense with the reason, the others prune."""
    import timm

    model = timm.create_model("test_mambaout", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = build_graph(model, x)
    frozen = [g for g in graph if g.frozen and "would leave module" in g.frozen]
    assert frozen and all("with none of its" in g.frozen for g in frozen)
    free = [g for g in graph if not g.frozen]
    assert free, "the other groups stay prunable"
    widths = widths_for(graph, {g.name: 0.9 for g in graph})
    assert all(widths[g.name] == g.channels for g in frozen)
    pruned = prune_channels(model, graph, widths).model
    assert pruned(x).shape == (1, 10) and count_cost(pruned, x) == graph.estimate(widths)


@pytest.mark.parametrize(("kwargs", "reason"), [({"fixed": True}, "fixed sizes"), ({"uneven": True}, "unequal size")])
def test_slices_that_cannot_shrink_in_step_freeze_their_group_with_the_reason(kwargs: dict, reason: str) -> None:
    model = _Sliced(**kwargs).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build_graph(model, x)
    stem = graph.group("stem")
    assert reason in stem.frozen and stem.multiple == stem.channels
    widths = widths_for(graph, {g.name: 0.9 for g in graph})
    assert widths["stem"] == 8
    assert prune_channels(model, graph, widths).model(x).shape == (1, 10)


def _digits_resized(size: tuple[int, int]) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Digits interpolated to a non-square ``size``: (train, val, test), 128 / 64 / 64 images."""
    data = load_data(DataConfig("digits"))
    x, y = (torch.cat(t) for t in zip(*(data.train[i : i + 1] for i in range(256))))
    x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:192], y[128:192]), TensorDataset(x[192:], y[192:])


def _mnist1d_small() -> tuple[Dataset, Dataset, Dataset]:
    data = load_data(DataConfig("mnist1d", train_size=128, val_size=64, test_size=64))
    return data.train, data.val, data.test


@pytest.mark.parametrize(
    ("name", "input_size", "splits"),
    [("resnet20_1d", (40,), _mnist1d_small), ("resnet20", (12, 20), lambda: _digits_resized((12, 20)))],
    ids=["signal", "non-square"],
)
def test_signals_and_non_square_images_go_the_whole_path(
    name: str, input_size: tuple[int, ...], splits: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workspace_for, cost, latency, a short search (the env), export and amc prune's model file."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    spec = ModelSpec(name, 1, 10, input_size)
    model = create_model(spec).eval()
    ws = workspace_for(model, *splits(), name=name)
    assert ws.spec == spec and ws.spec.input_shape == (1, *input_size)
    config = SearchConfig(agent="random", episodes=3, workers=0, experiment="shapes")
    config = config.replace(env=config.env.replace(target_ratio=0.5, bn_batches=1, bn_batch_size=16, eval_batches=1))
    result = run_search(config, tmp_path / "s", workspace=ws, track=False, progress=False)
    assert result.best.flops_ratio <= 0.5

    policy = load_policy(tmp_path / "s" / "best_policy.json")
    assert policy.model.input_shape == (1, *input_size)
    pruned = prune_with_policy(model, policy, ws.example_inputs(), graph=ws.graph)
    report = cost_report(ws, pruned.model, LatencyConfig(min_run_time=0.01))
    assert report["flops_ratio"] == pytest.approx(result.best.flops_ratio) and report["latency_ms"] > 0

    dense_file = save_model(tmp_path / "dense.pt", model, spec)
    saved = load_model(save_model(tmp_path / "pruned.pt", pruned.model, spec, policy, pruned.history))
    x = torch.randn(3, *spec.input_shape)
    assert torch.equal(saved.model(x), pruned.model.eval()(x))
    export = ["export", "--policy", str(tmp_path / "s" / "best_policy.json"), "--checkpoint", str(dense_file)]
    assert main([*export, "--format", "torch-pruning", "--out", str(tmp_path / "tp")]) == 0
    fresh = load_model(dense_file).model
    snippet = _load_snippet(tmp_path / "tp" / "apply_torch_pruning.py")
    snippet.prune(fresh, spec.example_inputs())
    assert torch.equal(fresh.eval()(x), pruned.model(x))


def test_mnist1d_is_deterministic_under_a_seed_and_its_splits_do_not_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    config = DataConfig("mnist1d", train_size=300, val_size=100, test_size=120, selection_size=80, seed=3)
    first = load_data(config)
    assert list((tmp_path / "cache" / "data").glob("mnist1d-*.npz")), "the generated samples are cached"
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "other"))  # generated again, not read from the cache
    again = load_data(config)
    splits = {"train": 300, "val": 100, "test": 120, "selection": 80}
    rows = {}
    for split, size in splits.items():
        x, y = getattr(first, split).tensors
        assert x.shape == (size, 1, 40) and torch.equal(x, getattr(again, split).tensors[0])
        assert torch.equal(y, getattr(again, split).tensors[1]) and set(y.tolist()) == set(range(10))
        rows[split] = {tuple(r.tolist()) for r in x.flatten(1)}
    assert sum(len(r) for r in rows.values()) == len(set().union(*rows.values())) == 600, "no sample in two splits"
    other = load_data(DataConfig("mnist1d", train_size=300, val_size=100, test_size=120, selection_size=80, seed=4))
    assert not torch.equal(other.train.tensors[0], first.train.tensors[0])
    with pytest.raises(ConfigError, match="length 40"):
        load_data(DataConfig("mnist1d", input_size=32))


def test_check_reports_a_residual_model() -> None:
    torch.manual_seed(0)
    model = create_model(ModelSpec("resnet20", 1, 10, 8))
    report = amc.check(model, torch.zeros(1, 1, 8, 8), episodes=300, latency=LatencyConfig(min_run_time=0.01))
    assert report.prunable and not report.refused and report.reload_exact is True
    assert report.cost == count_cost(model, torch.zeros(1, 1, 8, 8))
    stem = report.groups[0]
    assert stem.name == "conv1" and {"layer1.0.conv2", "layer1.2.conv2"} <= set(stem.modules)  # the residual adds
    assert set(report.latency_ms) == {1, 8, 16}
    # widths 16/32/64 are already multiples of 8 and 16: the same model, measured once and reported for each
    assert report.latency_ms[8] == report.latency_ms[16] == report.latency_ms[1]
    assert report.episode is not None and report.episode.batches == 8 + 5 and report.episode.episode_s > 0
    text = str(report)
    assert "couples conv1, layer1.0.conv2" in text and "300-episode search" in text and "reloads exactly: yes" in text


def test_check_reports_depthwise_groups_and_refuses_what_it_cannot_prune(capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    depthwise = create_model(ModelSpec("mobilenetv2_small", 1, 10, 8))
    report = amc.check(depthwise, torch.zeros(1, 1, 8, 8), latency=LatencyConfig(min_run_time=0.01))
    assert report.prunable and any(g.kind == "depthwise" for g in report.groups) and report.reload_exact

    cli = ["check", "--model", "torchvision:shufflenet_v2_x0_5", "--data", "synthetic", "--input-size", "32"]
    assert main([*cli, "--episodes", "10"]) == 2
    out, err = capsys.readouterr()
    assert "nothing can be pruned: TraceError" in out and "channel shuffle" in err
    assert err.startswith("amc check: error: nothing in torchvision:shufflenet_v2_x0_5 can be pruned")


class _Recurrent(nn.Module):
    """A conv feature extractor read by an LSTM (as timm's Sequencer mixes tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.conv(x).transpose(1, 2))
        return self.fc(out[:, -1])


def test_recurrent_layers_are_refused_with_the_module_named() -> None:
    with pytest.raises(TraceError, match=r"module 'rnn' is a recurrent layer \(LSTM\)"):
        build_graph(_Recurrent().eval(), torch.zeros(1, 1, 12))
