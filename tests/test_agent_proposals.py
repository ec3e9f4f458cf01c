"""Tests of the DDPG agent's critic ensemble, space-filling warm-up, elites and critic-ranked proposals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.base import DDPGAgent
from agents.ddpg import AMCDDPG, DDPGConfig, warmup_actions
from agents.proposals import walk_proposals
from agents.rollout import EpisodeRunner
from amc.errors import ConfigError
from envs import ChannelPruningEnv, EnvConfig

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
SMALL = {"hidden": (32, 32), "batch_size": 16}


@pytest.fixture(scope="module")
def env(trained_resnet20: Path) -> ChannelPruningEnv:
    return ChannelPruningEnv.from_config(
        EnvConfig(checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.3, max_ratio=0.9, **TINY)
    )


def _agent(env: ChannelPruningEnv, seed: int = 0, **overrides) -> DDPGAgent:
    return DDPGAgent(env, DDPGConfig(**{**SMALL, **overrides}), seed)


def _play(agent: DDPGAgent, env: ChannelPruningEnv, episodes: int) -> list[tuple[float, ...]]:
    """Plans, plays and learns ``episodes`` episodes in order; returns the ratios each one applied."""
    runner, played = EpisodeRunner(env, agent.impl.config), []
    for episode in range(episodes):
        result = runner.run(agent.plan(episode))
        agent.end_episode(result.observations, result.actions, result.reward)
        played.append(tuple(result.record.ratios.values()))
        assert result.record.flops_ratio <= env.wall.target_ratio
    return played


def test_latin_hypercube_warmup_covers_every_group_evenly() -> None:
    design = warmup_actions("lhs", 10, 7, seed=4)
    assert design.shape == (10, 7) and design.dtype == np.float32
    assert design.min() >= -1.0 and design.max() <= 1.0
    for column in design.T:  # one action in each tenth of [-1, 1]
        assert sorted(np.floor((column + 1.0) / 2.0 * 10).astype(int)) == list(range(10))
    np.testing.assert_array_equal(design, warmup_actions("lhs", 10, 7, seed=4))
    assert not np.array_equal(design, warmup_actions("lhs", 10, 7, seed=5))
    uniform = warmup_actions("uniform", 10, 7, seed=4)
    assert any(len(set(np.floor((c + 1.0) * 5).astype(int))) < 10 for c in uniform.T)  # no such promise


def test_critic_ensemble_values_every_pair(env: ChannelPruningEnv) -> None:
    agent = AMCDDPG(env, DDPGConfig(critics=3, **SMALL), seed=0)
    assert len(agent.model.critic.q_networks) == 3
    obs = np.random.default_rng(0).random((5, env.observation_space.shape[0])).astype(np.float32)
    q = agent.q_values(obs, np.linspace(-1, 1, 5))
    assert q.shape == (3, 5) and np.isfinite(q).all()
    assert np.ptp(q, axis=0).max() > 0  # independently initialised critics disagree


def test_elites_are_the_best_rewarded_episodes_of_the_buffer(env: ChannelPruningEnv) -> None:
    agent = AMCDDPG(env, DDPGConfig(warmup_episodes=10, **SMALL), seed=0)
    n = len(env.group_names)
    obs = [np.zeros(env.observation_space.shape, np.float32)] * (n + 1)
    rewards = [0.3, 0.9, 0.1, 0.7]
    for k, reward in enumerate(rewards):
        agent.end_episode(obs, [np.array([k / 10], np.float32)] * n, reward)
    elites = agent.elites(2, n)
    assert elites.shape == (2, n)
    np.testing.assert_allclose(elites[:, 0], [0.1, 0.3], rtol=1e-6)  # episodes 1 (0.9) and 3 (0.7)
    assert agent.elites(10, n).shape == (4, n) and agent.elites(0, n).shape == (0, n)


def test_the_proposal_played_is_the_one_the_critics_value_most(env: ChannelPruningEnv) -> None:
    agent = _agent(env, critics=3, warmup_episodes=4, proposals=8, elites=2, optimism=1.0)
    _play(agent, env, 5)  # warm-up, and one learning episode: the critics have been trained
    walked = walk_proposals(env, agent.impl, 0.5, np.random.default_rng(1), 12, 1.0, agent.impl.elites(2, 12))
    assert walked.actions.shape == walked.applied.shape == (12, len(env.group_names))
    np.testing.assert_allclose(walked.value, walked.predicted + walked.spread)
    assert np.ptp(walked.value) > 0
    best = walked.best()
    assert best.value == walked.value.max() and best.best_of == 12
    again = walk_proposals(env, agent.impl, 0.5, np.random.default_rng(1), 12, 1.0, agent.impl.elites(2, 12)).best()
    assert again == best  # seeded: the same walk, the same choice
    _, applied = env.walk(lambda i, obs: np.full(len(obs), best.actions[i]), 1)
    np.testing.assert_array_equal(applied[0], walked.applied[int(np.argmax(walked.value))])


def test_last_step_value_is_the_critics_value_of_the_whole_policy(env: ChannelPruningEnv) -> None:
    agent = _agent(env, critics=3, warmup_episodes=4, proposals=8, elites=2)
    _play(agent, env, 5)
    groups = len(env.group_names)
    walk = lambda steps: walk_proposals(  # noqa: E731
        env, agent.impl, 0.5, np.random.default_rng(2), 10, 0.0, agent.impl.elites(2, groups), steps
    )
    last, mean = walk("last"), walk("mean")
    np.testing.assert_array_equal(last.applied, mean.applied)  # the same proposals, valued two ways
    observations, applied = env.walk(lambda i, obs: last.actions[:, i], 10)
    q = agent.impl.q_values(observations[:, groups - 1], applied[:, groups - 1])  # the last decision's state
    np.testing.assert_allclose(last.predicted, q.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(last.predicted, mean.predicted)
    # with the history, the last state holds every earlier group's ratio, as the wall applied it
    history = observations[:, groups - 1, -groups:]
    channels = np.array([env.graph.group(name).channels for name in env.group_names])
    ratios = np.array([[env._action_to_ratio(a) for a in row] for row in applied])
    np.testing.assert_allclose(history[:, :-1], ratios[:, :-1], atol=0.5 / channels[:-1].min() + 1e-6)
    assert not history[:, -1].any()  # the last group is still undecided there


def test_proposal_search_is_seeded_meets_the_budget_and_reports_its_prediction(env: ChannelPruningEnv) -> None:
    settings = {"critics": 2, "warmup_episodes": 3, "warmup_design": "lhs", "proposals": 6, "elites": 2}
    first, second = _agent(env, **settings), _agent(env, **settings)
    assert _play(first, env, 6) == _play(second, env, 6)
    other = _play(_agent(env, seed=1, **settings), env, 6)
    assert other != _play(_agent(env, **settings), env, 6)
    plan = first.plan(6)
    assert plan.kind == "sequence" and plan.value is not None and len(plan.actions) == len(env.group_names)
    result = EpisodeRunner(env).run(plan)
    stats = first.end_episode(result.observations, result.actions, result.reward)
    assert stats["predicted_reward"] == plan.value and stats["updates"] > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("critics", 0),
        ("proposals", 0),
        ("optimism", -1.0),
        ("elites", -2),
        ("warmup_design", "sobol"),
        ("value_steps", "first"),
    ],
)
def test_bad_proposal_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        DDPGConfig(**{field: value})
