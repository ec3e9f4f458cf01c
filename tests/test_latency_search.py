"""A latency-target search end to end: absolute budgets, latency in the records, the measured Pareto policies.

Timings are never compared with each other or with a constant (the machine may be busy): the tests check
the structure (which policies are measured, that estimates and measurements sit side by side) and the
budget, which holds on the estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from agents.outputs import latency_front
from agents.records import EpisodeRecord, SearchConfig
from agents.search import run_search
from amc.cli import main
from amc.cost import LatencyConfig
from amc.data import DataConfig
from amc.engine import build_workspace
from amc.errors import BudgetError, ConfigError
from amc.service.front import read_front_csv
from envs import ChannelPruningEnv, EnvConfig

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
QUICK = LatencyConfig(min_run_time=0.002, grid=3)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "latency-cache"))


@pytest.fixture(scope="module")
def resnet20():
    return build_workspace("resnet20", DataConfig("digits"))


def _env_config(**changes) -> EnvConfig:
    return EnvConfig(model="resnet20", target_metric="latency", max_ratio=0.9, latency=QUICK, **TINY).replace(**changes)


def test_target_ms_becomes_the_ratio_of_the_dense_latency(resnet20) -> None:
    by_ratio = ChannelPruningEnv.from_workspace(resnet20, _env_config(target_ratio=0.9), progress=False)
    dense = by_ratio.cost_model.dense
    env = ChannelPruningEnv.from_workspace(
        resnet20, _env_config(target_ms=0.9 * dense), cost_model=by_ratio.cost_model, progress=False
    )
    assert env.config.target_ratio == pytest.approx(0.9)
    assert env.wall.target_ratio == pytest.approx(0.9)
    env.reset(seed=0)
    done = False
    while not done:  # the least pruning the agent can ask for: the wall must still meet the budget in ms
        _, _, done, _, info = env.step([-1.0])
    assert info["latency_ms"] <= 0.9 * dense * (1 + 1e-9)
    assert info["latency_ratio"] == pytest.approx(info["latency_ms"] / dense)


def test_target_ms_at_or_above_the_dense_latency_is_refused(resnet20) -> None:
    env = ChannelPruningEnv.from_workspace(resnet20, _env_config(target_ratio=0.9), progress=False)
    with pytest.raises(ConfigError, match="not below the dense model's latency"):
        ChannelPruningEnv.from_workspace(
            resnet20, _env_config(target_ms=1.5 * env.cost_model.dense), cost_model=env.cost_model, progress=False
        )


def test_a_search_whose_budget_is_out_of_reach_writes_nothing(trained_resnet20: Path, tmp_path: Path) -> None:
    env = _env_config(target_ms=1e-6, checkpoint=str(trained_resnet20 / "model.pt"))
    out = tmp_path / "search"
    with pytest.raises(BudgetError, match=r"target_ms 1e-06 is out of reach: .* estimated at [0-9.]+ ms \(dense"):
        run_search(SearchConfig(env=env, agent="random", episodes=2, workers=0), out, track=False, progress=False)
    assert not out.exists(), "the same command works again once the budget is fixed"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"target_ms": 0.0}, "positive number of milliseconds"),
        ({"target_ms": float("nan")}, "positive number of milliseconds"),
        ({"target_ms": "fast"}, "number of milliseconds"),
        ({"target_ms": 2.0, "target_metric": "flops"}, "needs target_metric: latency"),
    ],
)
def test_bad_target_ms_is_refused(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _env_config(**changes)


def _record(episode: int, top1: float, latency_ratio: float | None) -> EpisodeRecord:
    return EpisodeRecord(episode, top1, top1, 0.5, 0.5, {}, None, latency_ratio, latency_ratio)


def test_latency_front_keeps_the_non_dominated_episodes() -> None:
    records = [_record(0, 0.9, 0.8), _record(1, 0.8, 0.9), _record(2, 0.7, 0.5), _record(3, 0.95, 0.95)]
    records.append(_record(4, 0.6, None))  # no estimate: left out
    assert [r.episode for r in latency_front(records)] == [2, 0, 3]


@pytest.fixture(scope="module")
def latency_search(tmp_path_factory: pytest.TempPathFactory, trained_resnet20: Path) -> dict:
    """A 6-episode random latency search (budget 90%) logged to a SQLite MLflow store."""
    root = tmp_path_factory.mktemp("latency-search")
    config = SearchConfig(
        env=_env_config(target_ratio=0.9, checkpoint=str(trained_resnet20 / "model.pt")),
        agent="random",
        episodes=6,
        workers=0,
        checkpoint_every=3,
        experiment="latency-search",
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_search(config, root / "s", tracking_uri=uri, progress=False)
    return {"root": root, "uri": uri, "result": result, "summary": json.loads((root / "s" / "search.json").read_text())}


def test_latency_search_measures_its_pareto_policies_and_logs_them(latency_search: dict) -> None:
    summary, uri = latency_search["summary"], latency_search["uri"]
    episodes = summary["episodes"]
    assert all(e["latency_ratio"] <= 0.9 + 1e-9 and e["latency_ms"] > 0 for e in episodes), "the budget, estimated"
    front = summary["pareto"]
    assert front, "a search has at least one Pareto policy"
    on_front = {p["episode"] for p in front}
    expected = {r.episode for r in latency_front([EpisodeRecord(**{k: e[k] for k in _FIELDS}) for e in episodes])}
    assert on_front == expected
    for p in front:
        assert p["latency_ms_measured"] > 0 and p["latency_ms_estimated"] > 0
    measured = {e["episode"] for e in episodes if "latency_ms_measured" in e}
    assert measured == on_front | {summary["best"]["episode"]}, "the best and the front policies are measured"
    assert summary["latency_estimate"]["policies"] == len(measured)
    assert summary["latency_estimate"]["max_abs_err"] >= summary["latency_estimate"]["median_abs_err"] >= 0
    policy = json.loads((latency_search["root"] / "s" / "best_policy.json").read_text())
    for key in ("latency_ms_estimated", "latency_ms_measured"):  # the exported policy says what it was found at
        assert policy["measured"][key] == pytest.approx(summary["best"][key])
    assert policy["measured"]["dense_latency_ms_measured"] == pytest.approx(summary["dense_latency_ms_measured"])
    metrics = MlflowClient(uri).get_run(latency_search["result"].run_id).data.metrics
    assert metrics["pareto_policies"] == len(front)
    assert metrics["latency_estimate_median_abs_err"] == pytest.approx(summary["latency_estimate"]["median_abs_err"])


def test_amc_pareto_shows_estimated_and_measured_latency(
    latency_search: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pareto", "--experiment", "latency-search", "--tracking-uri", latency_search["uri"]]
    assert main([*args, "--out", str(tmp_path), "--no-tracking"]) == 0
    out = capsys.readouterr().out
    assert "latency_ratio" in out and "ms estimated" in out and "ms measured" in out
    rows = read_front_csv(tmp_path / "pareto_front.csv")
    assert rows and all(r["latency_ms"] > 0 for r in rows)
    measured = {e["episode"]: e.get("latency_ms_measured") for e in latency_search["summary"]["episodes"]}
    for row in rows:  # a policy on the experiment's front shows the measurement its search made, if any
        assert row["latency_ms_measured"] == (
            None if measured[row["episode"]] is None else pytest.approx(measured[row["episode"]])
        )
        if measured[row["episode"]] is not None:
            assert f"{measured[row['episode']]:.3f}" in out


_FIELDS = (
    "episode",
    "reward",
    "top1",
    "flops_ratio",
    "params_ratio",
    "ratios",
    "planned_after",
    "latency_ms",
    "latency_ratio",
)
