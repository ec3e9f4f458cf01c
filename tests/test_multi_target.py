"""Several budgets in one search (``env.targets``): each episode meets its own, and every target gets outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.base import DDPGAgent
from agents.ddpg import DDPGConfig
from agents.rollout import EpisodeRunner
from agents.search import SearchConfig, run_search
from amc.errors import ConfigError
from amc.policy import load_policy
from envs import ChannelPruningEnv, EnvConfig
from envs.targets import TargetRange, episode_target

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}


@pytest.fixture(scope="module")
def checkpoint(trained_resnet20: Path) -> str:
    return str(trained_resnet20 / "model.pt")


@pytest.mark.parametrize("targets", [(0.2, 0.35, 0.6), {"low": 0.25, "high": 0.7}])
def test_every_episode_meets_its_own_target(checkpoint: str, targets) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, targets=targets, max_ratio=0.9, **TINY))
    rng = np.random.default_rng(0)
    seen = set()
    for episode in range(24):
        obs, info = env.reset(seed=episode)  # the target is drawn from the seeded generator
        target = info["target"]
        seen.add(round(target, 6))
        assert obs[-1] == pytest.approx(target)  # the last feature of every observation
        done = False
        while not done:
            obs, _, done, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
            assert obs[-1] == pytest.approx(target)
        assert info["flops_ratio"] <= target + 1e-9 and info["target"] == target
    assert len(seen) >= 3  # several targets drawn
    again = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, targets=targets, max_ratio=0.9, **TINY))
    assert again.reset(seed=5)[1]["target"] == env.reset(seed=5)[1]["target"]  # seeded


def test_walk_and_reset_take_a_target_and_refuse_others(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, targets=(0.2, 0.6), **TINY))
    actions = np.full(len(env.group_names), -1.0)  # keep everything the wall allows
    for target in (0.2, 0.6):
        observations, applied = env.walk(lambda i, obs: np.full(len(obs), actions[i]), 2, target)
        assert np.all(observations[:, :, -1] == np.float32(target))
        env.reset(options={"target": target})
        for a in actions:
            info = env.step(np.array([a], np.float32))[4]
        assert np.array_equal([info["applied_action"]], applied[0, -1:]) and info["flops_ratio"] <= target
    with pytest.raises(ConfigError, match="not one of env.targets"):
        env.reset(options={"target": 0.3})
    with pytest.raises(ConfigError, match="not one of env.targets"):
        env.walk(lambda i, obs: np.zeros(len(obs)), 1, 0.3)


def test_the_target_changes_the_actors_output(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, targets=(0.2, 0.7), **TINY))
    agent = DDPGAgent(env, DDPGConfig(hidden=(32, 32)), seed=0)
    low, _ = env.reset(options={"target": 0.2})
    high, _ = env.reset(options={"target": 0.7})
    assert np.array_equal(low[:-1], high[:-1]) and low[-1] != high[-1]
    assert agent.impl.act_deterministic(low) != agent.impl.act_deterministic(high)


def test_ddpg_plans_carry_the_target_and_elites_come_from_it(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, targets=(0.25, 0.6), **TINY))
    agent = DDPGAgent(env, DDPGConfig(hidden=(32, 32), batch_size=8, warmup_episodes=4, proposals=6), seed=3)
    runner = EpisodeRunner(env, agent.impl.config)
    rewards: dict[float, list[float]] = {0.25: [], 0.6: []}
    for episode in range(8):
        plan = agent.plan(episode)
        assert plan.target == episode_target((0.25, 0.6), 3, episode)
        result = runner.run(plan)
        assert result.record.target == plan.target and result.record.flops_ratio <= plan.target
        agent.end_episode(result.observations, result.actions, result.reward)
        rewards[plan.target].append(result.reward)
    groups = len(env.group_names)
    for target, got in rewards.items():
        elites = agent.impl.elites(2, groups, target)
        best = sorted(got, reverse=True)[: len(elites)]
        assert len(elites) == min(2, len(got))
        # the elites' rewards are the best of this target's episodes, not of the other target's
        buffer = agent.impl.replay_buffer
        ends = np.flatnonzero(buffer.dones[: buffer.pos, 0] > 0.5)
        chosen = [
            e for e in ends if any(np.array_equal(buffer.actions[e - groups + 1 : e + 1, 0, 0], row) for row in elites)
        ]
        assert sorted((float(buffer.rewards[e, 0]) for e in chosen), reverse=True)[: len(best)] == pytest.approx(best)


@pytest.mark.slow
def test_a_multi_target_search_writes_every_targets_outputs(checkpoint: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    env = EnvConfig(checkpoint=checkpoint, targets=(0.3, 0.6), **TINY)
    config = SearchConfig(env=env, agent="random", episodes=8, seed=2, workers=0, experiment="test-targets")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_search(config, tmp_path / "s", tracking_uri=uri, progress=False)
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    episodes = summary["episodes"]
    assert {e["target"] for e in episodes} == {0.3, 0.6}
    assert all(e["flops_ratio"] <= e["target"] for e in episodes)  # each its own budget
    assert {episodes[0]["target"], episodes[1]["target"]} == {0.3, 0.6}  # uniform first, once per target
    assert [t["target"] for t in summary["targets"]] == [0.3, 0.6]
    for entry in summary["targets"]:
        within = [e for e in episodes if e["flops_ratio"] <= entry["target"]]
        assert entry["candidates"] == len(within) and entry["flops_ratio"] <= entry["target"]
        assert entry["reward"] == max(e["reward"] for e in within)
        policy = load_policy(tmp_path / "s" / entry["file"])
        assert policy.target.ratio == entry["target"] and policy.ratios == entry["policy"]
    assert summary["target"]["ratio"] == 0.3 and summary["best"]["policy"] == summary["targets"][0]["policy"]
    front = summary["front"]["policies"]

    def dominates(o: dict, p: dict) -> bool:
        keys = (o["top1"], -o["flops_ratio"], -o["params_ratio"]), (p["top1"], -p["flops_ratio"], -p["params_ratio"])
        return all(a >= b for a, b in zip(*keys)) and keys[0] != keys[1]

    assert front and not any(dominates(o, p) for o in front for p in front)
    on_front = {p["episode"] for p in front}
    assert all(any(dominates(p, e) for p in front) for e in episodes if e["episode"] not in on_front)
    run = MlflowClient(uri).get_run(result.run_id)
    assert {"best_top1_t0.3", "best_top1_t0.6", "front_hypervolume"} <= set(run.data.metrics)
    assert {"best_policy_t0.3.json", "best_policy_t0.6.json"} <= {
        a.path for a in MlflowClient(uri).list_artifacts(result.run_id)
    }


@pytest.mark.slow
def test_a_multi_target_ddpg_search_is_reproducible(checkpoint: str, tmp_path: Path) -> None:
    env = EnvConfig(checkpoint=checkpoint, targets={"low": 0.25, "high": 0.6}, **TINY)
    ddpg = DDPGConfig(hidden=(32, 32), warmup_episodes=3, batch_size=8, proposals=4)
    config = SearchConfig(env=env, agent="ddpg", episodes=7, seed=1, ddpg=ddpg, workers=0)
    runs = []
    for name in ("a", "b"):
        run_search(config, tmp_path / name, track=False, progress=False)
        runs.append(json.loads((tmp_path / name / "search.json").read_text()))
    assert runs[0]["episodes"] == runs[1]["episodes"]
    assert all(0.25 <= e["target"] <= 0.6 and e["flops_ratio"] <= e["target"] for e in runs[0]["episodes"])
    assert len(runs[0]["targets"]) == 5 and runs[0]["targets"][0]["target"] == 0.25


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ([], "non-empty"),
        ([0.2, 1.5], r"\(0, 1\]"),
        ([0.2, 0.2], "twice"),
        ({"low": 0.5, "high": 0.2}, "low < high"),
        ({"low": 0.2}, "low: L, high: H"),
        ("0.2", "non-empty list"),
    ],
)
def test_bad_targets_are_refused(targets, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EnvConfig(targets=targets)


def test_targets_need_an_agent_that_learns_them_and_a_flops_budget(checkpoint: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="latency"):
        EnvConfig(targets=(0.2, 0.5), target_metric="latency")
    env = EnvConfig(checkpoint=checkpoint, targets=(0.3, 0.6), **TINY)
    with pytest.raises(ConfigError, match="one target at a time"):
        run_search(SearchConfig(env=env, agent="tpe", workers=0), tmp_path / "t", track=False, progress=False)
    assert isinstance(EnvConfig(targets={"low": 0.2, "high": 0.4}).targets, TargetRange)
