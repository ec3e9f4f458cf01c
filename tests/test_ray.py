"""Parallel searches and sweeps on a real local Ray runtime (2 CPUs, started once for this module)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents.ddpg import DDPGConfig
from agents.search import Search, SearchConfig, run_search, save_yaml
from agents.sweep import SweepConfig, run_sweep
from envs import EnvConfig

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(checkpoint: Path, workers: int, episodes: int = 8) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint=str(checkpoint), target_ratio=0.4, eval_batches=1, bn_batches=2)
    ddpg = DDPGConfig(hidden=(32, 32), warmup_episodes=3, batch_size=8)
    return SearchConfig(env=env, agent="ddpg", episodes=episodes, seed=1, ddpg=ddpg, checkpoint_every=4,
                        experiment="test-ray", workers=workers, threads=1)


def test_parallel_search_matches_serial_form(trained_resnet20: Path, tmp_path: Path) -> None:
    serial = run_search(_config(trained_resnet20 / "model.pt", 1), tmp_path / "serial", track=False, progress=False)
    parallel = run_search(_config(trained_resnet20 / "model.pt", 2), tmp_path / "par", track=False, progress=False)
    a = json.loads((tmp_path / "serial" / "search.json").read_text())
    b = json.loads((tmp_path / "par" / "search.json").read_text())
    assert set(a) == set(b) and set(a["best"]) == set(b["best"])
    assert [e["episode"] for e in b["episodes"]] == list(range(8))
    assert all(e["flops_ratio"] <= 0.4 for e in b["episodes"]), "the budget holds on every worker"
    assert set(b["episodes"][0]["ratios"]) == set(a["episodes"][0]["ratios"])
    assert parallel.best.flops_ratio <= 0.4 and serial.best.flops_ratio <= 0.4
    assert len({tuple(e["ratios"].values()) for e in b["episodes"]}) == 8, "workers explore different policies"


def test_killed_worker_is_survived(trained_resnet20: Path, tmp_path: Path) -> None:
    config = _config(trained_resnet20 / "model.pt", 2, episodes=10)
    out = tmp_path / "kill"
    out.mkdir()
    save_yaml(config, out / "config.yaml")
    search = Search(config, out, progress=False)
    killed = []

    def kill_one(record, stats) -> None:
        if record.episode == 3 and not killed:
            victim = search.pool.actors[0]
            ray.kill(victim)
            deadline = time.monotonic() + 60
            with pytest.raises(ray.exceptions.RayActorError):  # wait until it is really gone
                while time.monotonic() < deadline:
                    ray.get(victim.pid.remote(), timeout=30)
                    time.sleep(0.1)
            killed.append(record.episode)

    result = search.run(kill_one)
    assert killed and search.pool.restarts >= 1
    records = json.loads((out / "search.json").read_text())["episodes"]
    assert [r["episode"] for r in records] == list(range(10)), "the lost episode was run again; nothing missing"
    assert result.episodes == 10


def test_tiny_sweep_logs_one_run_per_trial(trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    base = _config(trained_resnet20 / "model.pt", 1, episodes=4)
    sweep = SweepConfig(base="unused.yaml", name="tiny", grid={"env.target_ratio": [0.3, 0.5]}, max_concurrent=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = run_sweep(sweep, base, tmp_path / "sweep", tracking_uri=uri)
    assert sorted(r["env.target_ratio"] for r in results) == [0.3, 0.5]
    assert all(r["best_flops_ratio"] <= r["env.target_ratio"] for r in results)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-ray")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("amc.kind") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["env.target_ratio"] for r in children) == ["0.3", "0.5"]
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "top1")) == 4
        assert "search.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
