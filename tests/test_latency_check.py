"""Latency tables checked against whole models when they are built or loaded (a stand-in device makes the
measurements deterministic: a table built on a "slow" device must be caught when a "fast" one loads it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from amc.cost import LatencyConfig, count_flops
from amc.groups import ModelGraph
from amc.latency import LatencyTable
from amc.latency_check import check_table, trusted_table

CONFIG = LatencyConfig(min_run_time=0.002, grid=3)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def device(scale: float):
    """A stand-in device: milliseconds proportional to a module's FLOPs plus a fixed overhead, times ``scale``."""

    def measure(module: nn.Module, shape: tuple[int, ...], config: LatencyConfig) -> float:
        return scale * (1e-6 * count_flops(module, torch.zeros(1, *shape)) + 0.01)

    return measure


def test_a_table_measured_on_a_slower_machine_is_caught_at_load_and_measured_again(tmp_path: Path) -> None:
    model = _model()
    graph = ModelGraph(model, torch.zeros(1, 3, 8, 8))
    slow, fast = device(3.0), device(1.0)
    stale = LatencyTable.build(model, graph, CONFIG, cache_dir=tmp_path, progress=False, measure=slow)
    assert not check_table(stale, model, fast).agrees  # what a busy machine leaves in the cache

    table = trusted_table(model, graph, CONFIG, cache_dir=tmp_path, progress=False, measure=fast)
    assert table.check.rebuilt and table.check.agrees
    assert table.report.measured > 0
    dense = table.check.models[0]
    assert abs(dense.estimated_ms - dense.measured_ms) / dense.measured_ms < 0.2
    record = table.check.to_dict()
    assert record["agrees"] and record["ratio_measured"] < 1 and "load_per_core" in record

    again = trusted_table(model, graph, CONFIG, cache_dir=tmp_path, progress=False, measure=fast)
    assert not again.check.rebuilt and again.report.measured == 0  # the re-measured entries were cached

    forced = LatencyConfig(min_run_time=0.002, grid=3, rebuild=True)
    rebuilt = trusted_table(model, graph, forced, cache_dir=tmp_path, progress=False, measure=fast)
    assert rebuilt.report.measured == rebuilt.report.entries  # --rebuild-latency measures everything
