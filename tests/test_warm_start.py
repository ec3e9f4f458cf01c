"""Warm start (``init_from``): a search takes over another one's networks, relabelled replay and best policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.checkpoints import latest_checkpoint
from agents.ddpg import AMCDDPG, DDPGConfig
from agents.search import Search, SearchConfig, run_search
from amc.errors import ConfigError
from envs import EnvConfig

pytestmark = pytest.mark.slow


def _config(checkpoint: Path, target: float, episodes: int = 6, **changes) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint=str(checkpoint), target_ratio=target, eval_batches=1, bn_batches=2)
    ddpg = DDPGConfig(hidden=(32, 32), warmup_episodes=2, batch_size=8, proposals=8)
    config = SearchConfig(env=env, episodes=episodes, seed=3, ddpg=ddpg, checkpoint_every=2, workers=0)
    return config.replace(**changes)


@pytest.fixture(scope="module")
def source(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 8-episode ddpg search at 50% FLOPs."""
    out = tmp_path_factory.mktemp("source") / "s"
    run_search(_config(trained_resnet20 / "model.pt", 0.5, episodes=8), out, track=False, progress=False)
    return out


def _records(out: Path) -> list[dict]:
    return json.loads((out / "search.json").read_text())["episodes"]


def test_a_looser_target_takes_over_networks_and_every_episode(
    source: Path, trained_resnet20: Path, tmp_path: Path
) -> None:
    config = _config(trained_resnet20 / "model.pt", 0.7, init_from=str(source), init_episodes=3)
    search = Search(config, tmp_path / "w", progress=False)
    saved = AMCDDPG.load(latest_checkpoint(source)[0] / "agent")
    mine, theirs = search.agent.impl.model.policy.state_dict(), saved.model.policy.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), "networks taken over"
    assert search.agent.impl.baseline == saved.baseline
    assert search.state.warm_start == {
        "from": str(source),
        "source_episodes": 8,
        "same_evaluation": True,
        "replay_episodes": 8,  # every policy within 50% meets 70% as it is
        "seed_episodes": 3,
    }
    buffer, groups = search.agent.impl.replay_buffer, len(search.env.group_names)
    assert buffer.pos == 8 * groups
    ends = buffer.rewards[groups - 1 : 8 * groups : groups, 0]
    assert np.allclose(ends, [r["reward"] for r in _records(source)], atol=1e-6), "reward acc: the measured top-1"
    n = 8 * groups  # the walk at 70% meets what the episodes met at 50%: the same observations and actions
    assert np.allclose(buffer.observations[:n], saved.replay_buffer.observations[:n], atol=1e-6)
    assert np.allclose(buffer.actions[:n], saved.replay_buffer.actions[:n], atol=1e-6)


def test_a_warm_search_plays_the_fitted_best_policies_then_learns_without_warmup(
    source: Path, trained_resnet20: Path, tmp_path: Path
) -> None:
    config = _config(trained_resnet20 / "model.pt", 0.3, init_from=str(source), init_episodes=3)
    run_search(config, tmp_path / "w", track=False, progress=False)
    summary = json.loads((tmp_path / "w" / "search.json").read_text())
    records = summary["episodes"]
    assert all(r["flops_ratio"] <= 0.3 for r in records), "every episode meets the new budget"
    seeds = records[1:4]
    assert all(r["planned_after"] is None for r in records[:4]), "uniform, then the 3 seed policies"
    assert all(r["flops_ratio"] >= 0.25 for r in seeds), "seeds are fitted to use the budget, not walled"
    assert [r["planned_after"] for r in records[4:]] == [4, 5], "no warm-up: the agent plans from episode 4"
    source_records = _records(source)
    assert summary["warm_start"]["replay_episodes"] == sum(r["flops_ratio"] <= 0.3 for r in source_records)
    assert summary["warm_start"]["same_evaluation"] is True


def test_another_evaluation_carries_the_networks_but_no_rewards(
    source: Path, trained_resnet20: Path, tmp_path: Path
) -> None:
    config = _config(trained_resnet20 / "model.pt", 0.5, init_from=str(source))
    config = config.replace(env=config.env.replace(bn_batches=1))  # another calibration: other top-1s
    search = Search(config, tmp_path / "w", progress=False)
    assert search.state.warm_start["same_evaluation"] is False
    assert search.state.warm_start["replay_episodes"] == 0 and search.agent.impl.replay_buffer.pos == 0


def test_a_warm_search_resumes_exactly(source: Path, trained_resnet20: Path, tmp_path: Path) -> None:
    config = _config(trained_resnet20 / "model.pt", 0.4, episodes=7, init_from=str(source), init_episodes=3)
    straight = _records_of(run_search(config, tmp_path / "straight", track=False, progress=False).out)

    def stop(record, _stats) -> None:
        if record.episode == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "cut", track=False, progress=False, on_episode=stop)
    run_search(None, tmp_path / "cut", resume=True, track=False, progress=False)
    assert _records_of(tmp_path / "cut") == straight


def _records_of(out: Path) -> list[tuple]:
    return [(r["episode"], r["top1"], tuple(sorted(r["ratios"].items()))) for r in _records(out)]


def test_refusals_name_what_to_fix(source: Path, trained_resnet20: Path, tmp_path: Path) -> None:
    ckpt = trained_resnet20 / "model.pt"
    with pytest.raises(ConfigError, match="agent is 'tpe'"):
        _config(ckpt, 0.5, agent="tpe", init_from=str(source))
    with pytest.raises(ConfigError, match="no search there"):
        Search(_config(ckpt, 0.5, init_from=str(tmp_path)), tmp_path / "a", progress=False)
    random = tmp_path / "random"
    run_search(_config(ckpt, 0.5, agent="random", episodes=2), random, track=False, progress=False)
    with pytest.raises(ConfigError, match="random search"):
        Search(_config(ckpt, 0.5, init_from=str(random)), tmp_path / "b", progress=False)
    amc_observation = _config(ckpt, 0.5, init_from=str(source))
    amc_observation = amc_observation.replace(env=amc_observation.env.replace(observe_history=False))
    with pytest.raises(ConfigError, match="observes"):
        Search(amc_observation, tmp_path / "c", progress=False)
    wider = _config(ckpt, 0.5, init_from=str(source))
    with pytest.raises(ConfigError, match="hidden"):
        Search(wider.replace(ddpg=DDPGConfig(hidden=(64, 64))), tmp_path / "d", progress=False)


def test_a_multi_target_search_relabels_each_episode_at_its_own_target(trained_resnet20: Path, tmp_path: Path) -> None:
    ckpt = trained_resnet20 / "model.pt"
    front = _config(ckpt, 0.6, episodes=6)
    front = front.replace(env=front.env.replace(targets=(0.4, 0.6)))
    run_search(front, tmp_path / "front", track=False, progress=False)
    warm = _config(ckpt, 0.6, init_from=str(tmp_path / "front"))
    search = Search(warm.replace(env=warm.env.replace(targets=(0.4, 0.6, 0.8))), tmp_path / "w", progress=False)
    assert search.state.warm_start["replay_episodes"] == 6, "every episode's own target is one of the new ones"
    buffer, groups = search.agent.impl.replay_buffer, len(search.env.group_names)
    records = _records(tmp_path / "front")
    assert np.allclose(buffer.observations[0 : 6 * groups : groups, 0, -1], [r["target"] for r in records])
    assert np.allclose(buffer.rewards[groups - 1 : 6 * groups : groups, 0], [r["reward"] for r in records], atol=1e-6)
