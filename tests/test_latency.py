"""The latency cost model: the wall holds on the estimate, the estimate is monotone, the table is cached per device.

Timings are never compared with each other or with a constant: the machine running the tests may be busy.
Measurements use a very short ``min_run_time`` and a coarse grid to stay cheap; the cache tests count
calls of a deterministic stand-in measurement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from agents.outputs import LATENCY_METRICS
from agents.records import SearchConfig
from agents.search import Search
from amc.cost import BLOCKS, LatencyConfig, latency_stats
from amc.data import DataConfig
from amc.engine import Workspace, build_workspace
from amc.errors import ConfigError
from amc.groups import ModelGraph
from amc.latency import (
    CALIBRATION,
    LatencyTable,
    Residual,
    cache_file,
    calibration_widths,
    device_fingerprint,
    monotone,
    outliers,
)
from amc.pruning import prune_channels, widths_for
from envs import BudgetWall, ChannelPruningEnv, EnvConfig, create_cost_model
from envs.budget import fewest_widths
from envs.costs import LatencyCost

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
QUICK = LatencyConfig(min_run_time=0.002, grid=3)
MODELS = ("resnet20", "mobilenetv2_small")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every latency table of this module goes to one temporary cache directory, never the user's."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "latency-cache"))


@pytest.fixture(scope="module")
def workspaces() -> dict[str, Workspace]:
    return {name: build_workspace(name, DataConfig("digits")) for name in MODELS}


class Counting:
    """A deterministic stand-in for a measurement (grows with the module's parameters), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: nn.Module, shape: tuple[int, ...], config: LatencyConfig) -> float:
        self.calls += 1
        return 1e-3 * (1 + sum(p.numel() for p in module.parameters()) + int(np.prod(shape)))


class Additive:
    """A stand-in device the estimator can describe exactly: a forward pass takes the sum of its leaf modules'
    times, and a whole model ``overhead`` more plus ``per_element`` per output element of its conv / linear
    modules. A conv / linear module's time is bilinear in its input and output channels (what the grid
    interpolates exactly), a BatchNorm's linear in its channels with a weight that grows with the square of
    its spatial size (so no function of the summed activations can stand in for it: only a table entry of
    the layer it follows gets it right), any other module's a constant."""

    def __init__(self, overhead: float = 0.05, per_element: float = 1e-6) -> None:
        self.overhead, self.per_element = overhead, per_element
        self.wholes = 0

    @staticmethod
    def leaf(module: nn.Module, shape: tuple[int, ...]) -> float:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return 1e-3 * (1 + sum(p.numel() for p in module.parameters()) + int(np.prod(shape)))
        if isinstance(module, nn.BatchNorm2d):
            return 1e-8 * shape[0] * int(np.prod(shape[1:])) ** 2
        return 1e-3

    @torch.no_grad()
    def __call__(self, module: nn.Module, shape: tuple[int, ...], config: LatencyConfig) -> float:
        unit = isinstance(module, (nn.Conv2d, nn.Linear)) or (
            isinstance(module, nn.Sequential) and isinstance(module[0], (nn.Conv2d, nn.Linear))
        )
        self.wholes += not unit
        total = [0.0 if unit else self.overhead]

        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            total.append(self.leaf(mod, tuple(args[0].shape[1:])))
            if not unit and isinstance(mod, (nn.Conv2d, nn.Linear)):
                total.append(self.per_element * out[:1].numel())

        leaves = [m for m in module.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            module.eval()(torch.zeros(1, *shape))
        finally:
            for h in handles:
                h.remove()
        return sum(total)


def _random_widths(ws: Workspace, rng: np.random.Generator, max_ratio: float = 0.8) -> dict[str, int]:
    return widths_for(ws.graph, {g.name: float(rng.uniform(0.0, max_ratio)) for g in ws.graph})


# --------------------------------------------------------------------------- the wall holds on the estimate
@pytest.mark.parametrize("model", MODELS)
def test_latency_wall_holds_under_random_actions(model: str, workspaces: dict[str, Workspace]) -> None:
    ws = workspaces[model]
    config = EnvConfig(model=model, target_metric="latency", max_ratio=0.8, latency=QUICK, **TINY)
    fewest = fewest_widths(ws.graph.groups, config.min_ratio, config.max_ratio, config.round_to)
    cost = create_cost_model("latency", ws.graph, ws.model, latency=QUICK, fewest=fewest, progress=False)
    assert isinstance(cost, LatencyCost) and cost.dense > 0
    floor = cost.ratio(fewest)
    assert floor < 1.0, "the fewest channels must be estimated faster than the dense model"
    target = floor + 0.4 * (1.0 - floor)  # reachable, and tight enough for the wall to act
    env = ChannelPruningEnv.from_workspace(ws, config.replace(target_ratio=target), cost_model=cost)
    n = len(env.group_names)
    rng = np.random.default_rng(11)
    plans = [np.full((n, 1), -1.0, dtype=np.float32)] + [
        rng.uniform(-1, 1, (n, 1)).astype(np.float32) for _ in range(24)
    ]
    walled = 0
    for episode, actions in enumerate(plans):
        env.reset(seed=episode)
        infos = [env.step(a)[4] for a in actions]
        last = infos[-1]
        widths = {i["group"]: i["kept"] for i in infos}
        assert last["cost_ratio"] == pytest.approx(cost.ratio(widths))
        assert cost.ratio(widths) <= target, (
            f"{model}: episode {episode} estimates {cost.ratio(widths):.4f} > {target:.4f}"
        )
        walled += sum(i["walled"] for i in infos)
    assert walled > 0


# --------------------------------------------------------------------------- monotone by construction
@pytest.mark.parametrize("model", MODELS)
def test_estimate_is_monotone_in_every_group(model: str, workspaces: dict[str, Workspace]) -> None:
    ws = workspaces[model]
    table = LatencyTable.build(ws.model, ws.graph, QUICK, progress=False)
    for layer in table.layers.values():
        values = np.array(layer.values)
        assert (np.diff(values, axis=1) >= 0).all() and (np.diff(values, axis=0) >= 0).all()
    rng = np.random.default_rng(3)
    for _ in range(40):
        widths = _random_widths(ws, rng, 0.95)
        base = table.estimate(widths)
        for g in ws.graph:
            for kept in (widths[g.name] + 1, g.channels):
                if kept <= g.channels and kept % g.multiple == 0:
                    assert table.estimate({**widths, g.name: kept}) >= base, (g.name, kept)


@pytest.mark.parametrize("model", MODELS)
def test_estimate_is_exact_on_a_device_it_can_describe(
    model: str, workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    """Layer units (a layer and its tail), their interpolation, the layers' channels and the residual fitted to
    the calibration models add up to the whole model's time on a device they can describe."""
    ws = workspaces[model]
    device = Additive()
    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=device)
    assert device.wholes == CALIBRATION * 3 and len(table.report.calibration) == CALIBRATION
    assert table.report.calibration_error < 1e-9
    assert table.residual.slope == pytest.approx(device.per_element, rel=1e-6)
    rng = np.random.default_rng(5)
    for widths in [ws.graph.dense_widths()] + [_random_widths(ws, rng, 0.9) for _ in range(8)]:
        pruned = prune_channels(ws.model, ws.graph, widths).model
        assert table.estimate(widths) == pytest.approx(device(pruned, ws.spec.input_shape, QUICK), rel=1e-9)


def test_residual_fit_keeps_its_slope_non_negative() -> None:
    up = Residual.fit([10.0, 20.0, 30.0], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0])
    assert up.slope == pytest.approx(0.1) and up(20.0) == pytest.approx(2.0) and up(0.0) == pytest.approx(1.0)
    down = Residual.fit([10.0, 20.0, 30.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0])  # noise: more channels, less time
    assert down.slope == 0.0 and down(10.0) == down(30.0) == pytest.approx(2.0)
    flat = Residual.fit([10.0, 10.0], [1.0, 3.0], [1.0, 1.0])  # one configuration: no slope to fit
    assert flat.slope == 0.0 and flat(50.0) == pytest.approx(2.0)
    weighted = Residual.fit([10.0, 20.0, 30.0], [1.0, 1.0, 4.0], [1.0, 1.0, 100.0])
    assert weighted(10.0) == pytest.approx(1.0, abs=0.05), "the fastest models weigh most (relative error)"


def test_calibration_models_step_from_fewest_to_dense(workspaces: dict[str, Workspace]) -> None:
    ws = workspaces["mobilenetv2_small"]
    fewest = fewest_widths(ws.graph.groups, 0.0, 0.8, 1)
    steps = calibration_widths(ws.graph, fewest)
    assert steps[0] == fewest and steps[-1] == ws.graph.dense_widths() and len(steps) == CALIBRATION
    for g in ws.graph:
        kept = [s[g.name] for s in steps]
        assert kept == sorted(kept) and all(k % g.multiple == 0 for k in kept), g.name
    assert calibration_widths(ws.graph, ws.graph.dense_widths()) == [ws.graph.dense_widths()]


class StemNet(nn.Module):
    """conv-BN-ReLU-max-pool stem, a conv followed by a functional ReLU, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


def test_a_layer_is_measured_with_its_tail(workspaces: dict[str, Workspace], tmp_path: Path) -> None:
    """The channel-wise modules applied to a layer's output join its unit; an addition or a function ends it."""
    ws = workspaces["resnet20"]
    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=Counting())
    tails = {name: [type(m) for m in layer.spec.tail] for name, layer in table.layers.items()}
    assert tails["conv1"] == tails["layer1.0.conv1"] == [nn.BatchNorm2d, nn.ReLU]
    assert tails["layer1.0.conv2"] == [nn.BatchNorm2d], "the shortcut addition comes before the block's ReLU"
    assert tails["fc"] == []
    one, two = table.layers["layer1.0.conv1"].spec, table.layers["layer1.0.conv2"].spec
    assert one.key(8, 8) != two.key(8, 8), "a unit's tail is part of its cache key"
    unit, shape = one.build(8, 12)
    assert (
        isinstance(unit, nn.Sequential) and unit[1].num_features == 12 and unit(torch.zeros(2, *shape)).shape[1] == 12
    )

    model = StemNet().eval()
    graph = ModelGraph(model, torch.zeros(1, 1, 16, 16))
    stem = LatencyTable.build(model, graph, QUICK, cache_dir=tmp_path, progress=False, measure=Counting())
    assert [type(m) for m in stem.layers["conv1"].spec.tail] == [nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert stem.layers["conv2"].spec.tail == ()  # torch.relu is a function, not a module


def test_latency_stats_time_many_blocks() -> None:
    stats = latency_stats(nn.Conv2d(4, 4, 3), (4, 8, 8), QUICK)
    assert stats.blocks >= BLOCKS and 0 < stats.min_ms <= stats.median_ms and stats.iqr_ms >= 0


def test_monotone_grid_and_outlier_detection() -> None:
    raw = [[1.0, 3.0, 2.0], [0.5, 2.5, 4.0]]
    fixed = monotone(raw)
    # the mean of the cumulative maximum [[1, 3, 3], [1, 3, 4]] and the cumulative minimum from the wide end
    # [[0.5, 2, 2], [0.5, 2.5, 4]]: the narrower entry that took longer and the wider one meet in the middle
    assert fixed == [[0.75, 2.5, 2.5], [0.75, 2.75, 4.0]]
    assert monotone(fixed) == fixed
    rng = np.random.default_rng(0)
    for _ in range(20):
        grid = np.array(monotone(rng.uniform(0, 1, (4, 5)).tolist()))
        assert (np.diff(grid, axis=0) >= 0).all() and (np.diff(grid, axis=1) >= 0).all()
    assert outliers(raw, 0.25) == {(0, 0), (1, 0), (0, 1), (0, 2)}  # 1.0 > 1.25*0.5, 3.0 > 1.25*2.0
    assert outliers(fixed, 0.25) == set()


def test_an_outlier_is_measured_again_and_keeps_the_smaller_value(
    workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    ws = workspaces["resnet20"]
    honest = Counting()
    spiked: dict[int, int] = {}

    def measure(module: nn.Module, shape: tuple[int, ...], config: LatencyConfig) -> float:
        value = honest(module, shape, config)
        size = sum(p.numel() for p in module.parameters())
        layer = module[0] if isinstance(module, nn.Sequential) else module  # a layer and its tail
        if isinstance(layer, nn.Conv2d) and layer.in_channels == 1 and spiked.setdefault(size, 0) == 0:
            spiked[size] += 1
            return value * 100  # a busy machine, once
        return value

    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=measure)
    assert table.report.remeasured >= 1
    reference = LatencyTable.build(
        ws.model, ws.graph, QUICK, cache_dir=tmp_path / "ref", progress=False, measure=Counting()
    )
    name = "layer1.0.conv1"
    assert table.layers[name].values == reference.layers[name].values


# --------------------------------------------------------------------------- the cache
def test_second_build_measures_nothing_and_threads_are_not_shared(
    workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    ws = workspaces["mobilenetv2_small"]
    first, second, other = Counting(), Counting(), Counting()
    a = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=first)
    assert first.calls > 0 and a.report.measured > 0 and a.report.cached == 0
    b = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=second)
    assert second.calls == 0 and b.report.measured == 0 and b.report.cached == a.report.entries
    assert b.layers == a.layers, "layers (with their tails) read from the cache equal the measured ones"
    rng = np.random.default_rng(0)
    for _ in range(10):
        widths = _random_widths(ws, rng)
        assert a.estimate(widths) == b.estimate(widths)
    two = LatencyConfig(min_run_time=QUICK.min_run_time, grid=QUICK.grid, threads=2)
    assert cache_file(two, tmp_path) != cache_file(QUICK, tmp_path)
    c = LatencyTable.build(ws.model, ws.graph, two, cache_dir=tmp_path, progress=False, measure=other)
    assert other.calls > 0 and c.report.cached == 0, "another thread count must be measured, not reused"
    stored = json.loads(Path(a.report.cache_path).read_text())
    assert stored["fingerprint"] == device_fingerprint(QUICK) and stored["fingerprint"]["threads"] == 1
    assert len(stored["entries"]) + len(stored["models"]) == a.report.entries
    for changed in (
        {"batch_size": 4},
        {"dtype": "bfloat16"},
    ):
        config = LatencyConfig(min_run_time=QUICK.min_run_time, grid=QUICK.grid, **changed)
        assert cache_file(config, tmp_path) != cache_file(QUICK, tmp_path), changed
    assert cache_file(LatencyConfig(min_run_time=1.0, grid=3), tmp_path) == cache_file(QUICK, tmp_path)


def test_build_shows_progress_and_reports_its_cost(
    workspaces: dict[str, Workspace], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = workspaces["resnet20"]
    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, measure=Counting())
    err = capsys.readouterr().err
    assert "latency table" in err and f"{table.report.entries} entries" in err and str(tmp_path) in err
    assert table.report.seconds >= 0 and table.report.measured == table.report.entries


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"min_run_time": 0}, "min_run_time"),
        ({"min_run_time": -0.1}, "min_run_time"),
        ({"device": "tpu"}, "device 'tpu' is unknown"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": -1}, "threads"),
        ({"grid": 1}, "grid"),
    ],
)
def test_bad_latency_settings_raise_config_error(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LatencyConfig(**changes)
    with pytest.raises(ConfigError, match=match):
        EnvConfig(target_metric="latency", latency=changes)


def test_yaml_names_the_bad_latency_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  target_metric: latency\n  latency: {min_run_time: 0}\n")
    with pytest.raises(ConfigError, match=r"env\.latency\.min_run_time"):
        SearchConfig.from_yaml(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_when_measuring(workspaces: dict[str, Workspace]) -> None:
    config = LatencyConfig(device="cuda")  # a config written on a GPU machine still loads
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        config.check_available()
    ws = workspaces["resnet20"]
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        ChannelPruningEnv.from_workspace(ws, EnvConfig(target_metric="latency", latency=config, **TINY))


def test_preset_is_a_latency_search() -> None:
    config = SearchConfig.from_yaml(ROOT / "experiments" / "configs" / "digits-resnet20-latency50.yaml")
    assert (config.env.target_metric, config.env.target_ratio) == ("latency", 0.5)
    assert config.env.latency.batch_size >= 1 and config.env.latency.min_run_time > 0


def test_flops_and_params_ignore_latency_settings(workspaces: dict[str, Workspace]) -> None:
    ws = workspaces["resnet20"]
    for metric in ("flops", "params"):
        cost = create_cost_model(metric, ws.graph, ws.model, latency=QUICK)
        wall = BudgetWall(ws.graph.groups, cost, 0.5, 0.0, 0.8, 1)
        assert cost.metric == metric and wall.meets(wall.fewest)


# --------------------------------------------------------------------------- after the search
class FakeTracker:
    """Records what a search logs (the parts of RunTracker the search calls)."""

    run_name = "fake"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path: Path) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass


def test_latency_search_measures_the_best_policy(tmp_path: Path) -> None:
    env = EnvConfig(model="resnet20", target_metric="latency", target_ratio=0.95, max_ratio=0.9, latency=QUICK, **TINY)
    config = SearchConfig(env=env, agent="random", episodes=2, workers=0, checkpoint_every=1)
    tracker = FakeTracker()
    result = Search(config, tmp_path / "s", tracker, progress=False).run()
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    best = summary["best"]
    assert best["latency_ms_estimated"] > 0 and best["latency_ms_measured"] > 0
    assert summary["dense_latency_ms_measured"] > 0
    assert best["latency_ms_estimated"] <= 0.95 * summary["dense_latency_ms_estimated"] + 1e-12  # the budget
    for metric, (section, key) in LATENCY_METRICS.items():
        assert tracker.metrics[metric] == (summary[section] if section else summary)[key]
    measured = {best["episode"], *(p["episode"] for p in summary["pareto"])}
    assert summary["latency_estimate"]["policies"] == len(measured), "the best and each Pareto policy, once"
    assert result.best.ratios == best["policy"]


def test_workers_reuse_the_learners_table(workspaces: dict[str, Workspace], tmp_path: Path) -> None:
    """A rollout worker gets the learner's payload (pickled, as Ray ships it) and builds no table of its own."""
    import pickle

    from agents.parallel import build_env

    ws = workspaces["resnet20"]
    config = EnvConfig(
        model="resnet20", target_metric="latency", target_ratio=0.95, max_ratio=0.8, latency=QUICK, **TINY
    )
    table = LatencyTable.build(ws.model, ws.graph, QUICK, cache_dir=tmp_path, progress=False, measure=Counting())
    cost = LatencyCost(ws.graph, table)
    payload = pickle.loads(pickle.dumps({"ws": ws, "env_config": config, "cost_model": cost, "progress": False}))
    env = build_env(payload)
    assert env.cost_model is payload["cost_model"]
    rng = np.random.default_rng(1)
    for _ in range(5):
        widths = _random_widths(ws, rng)
        assert env.cost_model.cost(widths) == cost.cost(widths)
    with pytest.raises(ConfigError, match="other groups"):
        other = workspaces["mobilenetv2_small"]
        ChannelPruningEnv.from_workspace(other, config.replace(model="mobilenetv2_small"), cost_model=cost)
