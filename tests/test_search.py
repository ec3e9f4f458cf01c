"""A tiny search end to end: outputs, the MLflow run, and an interrupted search that resumes exactly."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_search
from amc.errors import ConfigError
from amc.policy import load_policy
from envs import EnvConfig

pytestmark = pytest.mark.slow


def _config(checkpoint: Path, agent: str = "ddpg", episodes: int = 6) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint=str(checkpoint), target_ratio=0.5, eval_batches=1, bn_batches=2)
    ddpg = DDPGConfig(hidden=(32, 32), warmup_episodes=2, batch_size=8)
    return SearchConfig(
        env=env,
        agent=agent,
        episodes=episodes,
        seed=3,
        ddpg=ddpg,
        checkpoint_every=2,
        experiment="test-search",
        workers=0,
    )


class Interrupt(Exception):
    pass


def test_search_writes_outputs_and_mlflow_run(trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_search(_config(trained_resnet20 / "model.pt"), tmp_path / "s", tracking_uri=uri, progress=False)
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert summary["target"] == {"metric": "flops", "ratio": 0.5}
    assert [e["episode"] for e in summary["episodes"]] == list(range(6))
    assert all(e["flops_ratio"] <= 0.5 for e in summary["episodes"]), "the budget holds in every episode"
    assert set(summary["best"]) >= {"policy", "top1", "flops_ratio", "params_ratio"}
    assert summary["best"]["top1"] == max(e["top1"] for e in summary["episodes"])  # reward `acc` is top-1
    policy = load_policy(tmp_path / "s" / "best_policy.json")
    assert policy.ratios == summary["best"]["policy"] and policy.target.ratio == 0.5
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["env.target_ratio"] == "0.5" and run.data.params["agent"] == "ddpg"
    history = client.get_metric_history(result.run_id, "top1")
    assert sorted(m.step for m in history) == list(range(6))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [e["top1"] for e in summary["episodes"]]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"search.json", "best_policy.json", "best_policy.png", "search_curves.png"} <= artifacts
    # in-process, every learning episode (after the uniform episode 0 and warm-up episode 1) is planned
    # right after the previous one: staleness 0, reported in search.json and MLflow
    assert summary["staleness"] == {"bound": 0, "max": 0, "mean": 0.0, "episodes": 4}
    assert run.data.params["staleness_bound"] == "0" and run.data.params["max_staleness"] == "auto"
    assert run.data.metrics["staleness_max"] == 0.0 and run.data.metrics["staleness_mean"] == 0.0
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "staleness")) == [2, 3, 4, 5]


def test_interrupted_search_resumes_exactly(trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(trained_resnet20 / "model.pt")
    run_search(config, tmp_path / "straight", track=False, progress=False)

    def interrupt_in_episode_4(record, stats) -> None:
        if record.episode == 4:  # after the checkpoint at 4 episodes: episode 4 is lost and must be run again
            raise Interrupt

    with pytest.raises(Interrupt):
        run_search(config, tmp_path / "cut", tracking_uri=uri, progress=False, on_episode=interrupt_in_episode_4)
    with pytest.raises(ConfigError, match="already holds a search"):
        run_search(config, tmp_path / "cut", tracking_uri=uri, progress=False)
    resumed = run_search(None, tmp_path / "cut", resume=True, tracking_uri=uri, progress=False)
    a = json.loads((tmp_path / "straight" / "search.json").read_text())["episodes"]
    b = json.loads((tmp_path / "cut" / "search.json").read_text())["episodes"]
    assert [e["episode"] for e in b] == list(range(6)), "nothing duplicated, nothing missing"
    assert a == b, "a resumed search continues exactly where the interrupted one stopped"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(resumed.run_id, "reward")]
    assert sorted(steps) == list(range(6)), "each episode logged to MLflow once"
    name = MlflowClient(uri).get_run(resumed.run_id).info.run_name
    assert resumed.run_name == name and name.endswith(f"-{resumed.run_id[:6]}"), "a resumed run keeps its name"


def test_resume_runs_the_plans_made_before_the_checkpoint(trained_resnet20: Path, tmp_path: Path) -> None:
    """Two workers plan each episode one behind the learner; a resume runs the checkpointed plan, not a new one."""
    from agents.search import Search, save_yaml

    config = _config(trained_resnet20 / "model.pt").replace(workers=2)

    def search(out: Path, on_episode=None) -> list[dict]:
        if not out.exists():
            out.mkdir()
            save_yaml(config, out / "config.yaml")
        Search(config, out, progress=False, ray=False).run(on_episode)  # the two-worker schedule, in this process
        return json.loads((out / "search.json").read_text())["episodes"]

    straight = search(tmp_path / "straight")
    assert [e["planned_after"] for e in straight] == [None, None, 1, 2, 3, 4], "2 warm-up episodes, then one behind"

    def interrupt_in_episode_4(record, stats) -> None:
        if record.episode == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        search(tmp_path / "cut", interrupt_in_episode_4)
    state = json.loads(next((tmp_path / "cut" / "checkpoint").glob("ep-*/state.json")).read_text())
    assert state["episode"] == 4 and state["planned"] == [4], "episode 4 was planned after 3 episodes"
    assert search(tmp_path / "cut") == straight, "the resumed search continues exactly"


def test_tpe_resume_adopts_the_checkpointed_trial(trained_resnet20: Path, tmp_path: Path) -> None:
    """A trial asked before the checkpoint and not yet told is asked again with the same parameters."""
    from agents.search import Search, save_yaml

    config = _config(trained_resnet20 / "model.pt", "tpe", episodes=4).replace(workers=2)

    def search(out: Path, on_episode=None) -> list[dict]:
        if not out.exists():
            out.mkdir()
            save_yaml(config, out / "config.yaml")
        Search(config, out, progress=False, ray=False).run(on_episode)
        return json.loads((out / "search.json").read_text())["episodes"]

    straight = search(tmp_path / "straight")

    def interrupt_in_episode_2(record, stats) -> None:
        if record.episode == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        search(tmp_path / "cut", interrupt_in_episode_2)
    resumed = search(tmp_path / "cut")
    assert [e["episode"] for e in resumed] == list(range(4)), "nothing duplicated, nothing missing"
    assert resumed[:3] == straight[:3], "episode 2 ran the trial planned before the checkpoint"


def _metric_steps(client, run_id: str) -> dict[str, dict[int, list[float]]]:
    """Every metric of a run: name -> step -> the values logged at that step."""
    out: dict[str, dict[int, list[float]]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            out.setdefault(key, {}).setdefault(m.step, []).append(m.value)
    return out


def test_resume_logs_every_metric_of_episodes_checkpointed_but_not_flushed(
    trained_resnet20: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from agents.checkpoints import save_checkpoint
    from agents.search import Search

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(trained_resnet20 / "model.pt")
    straight = run_search(config, tmp_path / "straight", tracking_uri=uri, progress=False)
    checkpoint = Search.checkpoint

    def die_between_checkpoint_and_flush(self: Search) -> None:
        if self.state.episode == 4:
            save_checkpoint(self.out, self.agent, self.state)  # episodes 2 and 3 are checkpointed ...
            raise Interrupt  # ... but their buffered metrics never reach MLflow
        checkpoint(self)

    monkeypatch.setattr(Search, "checkpoint", die_between_checkpoint_and_flush)
    with pytest.raises(Interrupt):
        run_search(config, tmp_path / "cut", tracking_uri=uri, progress=False)
    monkeypatch.undo()
    client = MlflowClient(uri)
    state = json.loads(next((tmp_path / "cut" / "checkpoint").glob("ep-*/state.json")).read_text())
    assert state["version"] == 3 and sorted(state["agent_stats"]) == ["0", "1", "2", "3"]
    assert client.get_run(state["run_id"]).info.status == "KILLED"
    before = _metric_steps(client, state["run_id"])
    assert sorted(before["reward"]) == [0, 1] and sorted(before["agent_sigma"]) == [0, 1], (
        "the setup lost episodes 2, 3"
    )

    resumed = run_search(None, tmp_path / "cut", resume=True, tracking_uri=uri, progress=False)
    assert resumed.run_id == state["run_id"] and client.get_run(resumed.run_id).info.status == "FINISHED"
    expected, got = _metric_steps(client, straight.run_id), _metric_steps(client, resumed.run_id)
    assert {
        "reward",
        "top1",
        "flops_ratio",
        "params_ratio",
        "best_reward",
        "best_top1",
        "agent_sigma",
        "agent_updates",
        "agent_critic_loss",
        "agent_actor_loss",
    } <= set(expected)
    assert sorted(got) == sorted(expected), "the resumed run has every metric of an uninterrupted one"
    for key, steps in expected.items():
        assert sorted(got[key]) == sorted(steps), f"{key}: logged for the same episodes"
        for step, values in got[key].items():
            assert len(values) == 1, f"{key} logged {len(values)} times for episode {step}"
            assert values == pytest.approx(steps[step], rel=1e-6), f"{key} of episode {step}"
    assert sorted(got["agent_critic_loss"]) == [2, 3, 4, 5], "agent statistics of the episodes after warm-up"


def _check_run_name(client, run_id: str, prefix: str) -> str:
    """The run's name is ``<prefix>-<start time, UTC, to the minute>-<first 6 characters of its id>``."""
    run = client.get_run(run_id)
    name = run.info.run_name
    start = dt.datetime.fromtimestamp(run.info.start_time / 1000, tz=dt.UTC)
    assert re.fullmatch(re.escape(prefix) + r"-\d{8}-\d{4}-[0-9a-f]{6}", name), name
    assert name == f"{prefix}-{start:%Y%m%d-%H%M}-{run_id[:6]}", name
    assert run.data.tags["mlflow.runName"] == name, "the UI's run name tag agrees"
    return name


def test_searches_of_one_config_get_their_own_run_names(trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(trained_resnet20 / "model.pt", "random", episodes=2)
    results = [run_search(config, tmp_path / f"s{i}", tracking_uri=uri, progress=False) for i in range(2)]
    client = MlflowClient(uri)
    names = [_check_run_name(client, r.run_id, "resnet20-flops0.5-random-s3") for r in results]
    assert names[0] != names[1], "two searches of one config in one experiment are told apart by name"
    assert [r.run_name for r in results] == names


def test_sweep_runs_get_their_own_names(trained_resnet20: Path, tmp_path: Path) -> None:
    """The sweep's driver logs one child run per trial (no Ray needed to log): each has a name of its own."""
    from mlflow.tracking import MlflowClient

    from agents.sweep import SweepConfig, log_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(trained_resnet20 / "model.pt", "random", episodes=2)
    run_search(config, tmp_path / "trial", track=False, progress=False)
    sweep = SweepConfig(base="unused.yaml", name="tiny", grid={"seed": [3, 3]})
    trial = {"seed": 3, "out": str(tmp_path / "trial"), "best_top1": 0.5, "error": None}
    parent_id = log_sweep(sweep, config, [trial, dict(trial)], uri)  # two trials with the same config fields
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(config.experiment).experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    prefix = f"resnet20-flops0.5-random-s3-{config.env.reward}"
    names = {_check_run_name(client, r.info.run_id, prefix) for r in children}
    assert len(children) == 2 and len(names) == 2, "each trial's run has its own name"
    _check_run_name(client, parent_id, "sweep-tiny")


def test_checkpoint_versions(tmp_path: Path) -> None:
    from agents.checkpoints import checkpointed_agent_stats

    where = tmp_path / "checkpoint" / "ep-000002"
    where.mkdir(parents=True)
    (tmp_path / "checkpoint" / "LATEST").write_text("ep-000002\n")
    (where / "state.json").write_text(json.dumps({"episode": 2, "records": []}))
    assert checkpointed_agent_stats(tmp_path) == {}, "a version 1 checkpoint (no agent statistics) still reads"
    (where / "state.json").write_text(json.dumps({"version": 99, "episode": 2, "records": []}))
    with pytest.raises(ConfigError, match="newer amc-search .* upgrade amc-search"):
        checkpointed_agent_stats(tmp_path)


def test_baseline_agents(trained_resnet20: Path, tmp_path: Path) -> None:
    uniform = run_search(_config(trained_resnet20 / "model.pt", "uniform"), tmp_path / "u", track=False, progress=False)
    assert uniform.episodes == 1, "the uniform baseline is one policy"
    assert len(set(uniform.best.ratios.values())) == 1
    assert uniform.best.flops_ratio <= 0.5
    run_search(
        _config(trained_resnet20 / "model.pt", "random", episodes=4), tmp_path / "r", track=False, progress=False
    )
    episodes = json.loads((tmp_path / "r" / "search.json").read_text())["episodes"]
    assert len({tuple(e["ratios"].values()) for e in episodes}) == 4, "random search proposes distinct policies"


def test_resume_needs_a_search(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no search to resume"):
        run_search(None, tmp_path, resume=True)


def test_ddpg_warmup_is_scaled_when_it_leaves_no_room_to_learn(
    trained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import dataclasses

    config = _config(trained_resnet20 / "model.pt", episodes=4)
    config = config.replace(ddpg=dataclasses.replace(config.ddpg, warmup_episodes=10))
    assert config.with_room_to_learn()[0].ddpg.warmup_episodes == 1
    roomy = config.replace(episodes=20)
    assert roomy.with_room_to_learn() == (roomy, None)  # 10 of 20: half the budget still learns
    assert config.replace(agent="random").with_room_to_learn()[1] is None

    updates: list[float] = []
    run_search(
        config,
        tmp_path / "s",
        track=False,
        progress=False,
        on_episode=lambda r, s: updates.append(s.get("updates", 0.0)),
    )
    assert "warm-up scaled from 10 to 1 episodes so that 3 of 4 episodes learn" in capsys.readouterr().err
    assert SearchConfig.from_yaml(tmp_path / "s" / "config.yaml").ddpg.warmup_episodes == 1  # resume keeps it
    assert updates[0] == 0 and all(u > 0 for u in updates[1:]), updates


@pytest.mark.parametrize("agent", ["random", "tpe", "ddpg"])
def test_first_episode_plays_the_uniform_policy(agent: str, trained_resnet20: Path, tmp_path: Path) -> None:
    """The simplest answer is always a candidate: a search never returns less than uniform on search-val."""
    config = _config(trained_resnet20 / "model.pt", agent=agent, episodes=4)
    run_search(config, tmp_path / "s", track=False, progress=False)
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    first, uniform = summary["episodes"][0], summary["uniform"]
    assert all(r == pytest.approx(uniform["ratio"], abs=1e-6) for r in first["ratios"].values()), first["ratios"]
    assert first["top1"] == pytest.approx(uniform["top1"])
    assert summary["best"]["top1"] >= uniform["top1"]

    run_search(config.replace(uniform_first=False), tmp_path / "off", track=False, progress=False)
    off = json.loads((tmp_path / "off" / "search.json").read_text())["episodes"][0]
    assert len(set(off["ratios"].values())) > 1, "without uniform_first the agent plans episode 0 itself"


def test_workspace_for_refuses_what_it_cannot_search() -> None:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from amc.engine import workspace_for

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    square = TensorDataset(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    ws = workspace_for(model, square, square, square, name="tiny")
    assert (ws.spec.in_channels, ws.spec.input_size, ws.spec.num_classes) == (3, 8, 4) and len(ws.graph) >= 1
    volumes = TensorDataset(torch.randn(4, 1, 3, 8, 12), torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        ConfigError, match=r"does not run on the training inputs \(a batch of shape \(1, 1, 3, 8, 12\)\)"
    ):
        workspace_for(model, volumes, volumes, volumes)  # a 2-D model
    batched = TensorDataset(torch.randn(4, 1, 1, 3, 8, 12), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\(C, L\) signals, \(C, H, W\) images or \(C, D, H, W\) volumes"):
        workspace_for(model, batched, batched, batched)
    with pytest.raises(ConfigError, match="val split is empty"):
        workspace_for(model, square, TensorDataset(torch.randn(0, 3, 8, 8), torch.zeros(0)), square)


@pytest.mark.parametrize("bad", [-1, "never", 1.5, True])
def test_bad_staleness_bound_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="max_staleness"):
        SearchConfig(max_staleness=bad)


@pytest.mark.parametrize("text", ["-1", "1.5", "soon"])
def test_bad_staleness_bound_in_yaml_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"agent: random\nmax_staleness: {text}\n")
    with pytest.raises(ConfigError, match="max_staleness"):
        SearchConfig.from_yaml(path)
    assert SearchConfig.from_yaml(path, ["max_staleness=2"]).max_staleness == 2


@pytest.mark.parametrize("bad", [-1, "many", 1.5, True])
def test_bad_workers_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="workers"):
        SearchConfig(workers=bad)


@pytest.mark.parametrize("bad", ["disk", "", None])
def test_bad_worker_data_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="worker_data must be object_store .* or path"):
        SearchConfig(worker_data=bad)


@pytest.mark.parametrize(("written", "legacy", "now"), [(1, True, 0), (0, True, "auto"), (3, True, 3), (1, False, 1)])
def test_a_search_directory_of_an_older_version_keeps_its_workers(tmp_path: Path, written, legacy, now) -> None:
    """Before ``max_staleness`` existed, workers 1 meant in-process and 0 the local CPUs."""
    from agents.search import save_yaml, stored_config

    save_yaml(SearchConfig(agent="random", workers=written), tmp_path / "config.yaml")
    if legacy:
        text = (tmp_path / "config.yaml").read_text()
        (tmp_path / "config.yaml").write_text(re.sub(r"(?m)^max_staleness:.*\n", "", text))
    assert stored_config(tmp_path).workers == now


def test_a_search_directory_from_before_the_history_resumes_with_amc_observation(tmp_path: Path) -> None:
    from agents.search import save_yaml, stored_config

    save_yaml(SearchConfig(agent="random"), tmp_path / "config.yaml")
    assert stored_config(tmp_path).env.observe_history is True
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(re.sub(r"(?m)^  observe_history:.*\n", "", text))
    assert stored_config(tmp_path).env.observe_history is False
