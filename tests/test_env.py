"""Tests of the channel-pruning environment (envs/): budget wall, Gymnasium contract, rewards, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from amc.cost import count_cost
from amc.data import DataConfig, load_data
from amc.engine import apply_policy, build_workspace
from amc.errors import BudgetError, ConfigError
from amc.pruning import CRITERIA, kept_channels, widths_for
from amc.train import evaluate
from envs import ENV_ID, REWARDS, BudgetWall, ChannelPruningEnv, EnvConfig, InvalidActionError, create_cost_model

# Tiny evaluation (1 calibration batch of 16, 2 evaluation batches of 16): the code path of a real search,
# at a fraction of its cost, for tests that check the budget rather than the accuracy.
TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}


@pytest.fixture(scope="module")
def checkpoint(trained_resnet20: Path) -> str:
    return str(trained_resnet20 / "model.pt")


def _episode(env: ChannelPruningEnv, actions: np.ndarray, seed: int = 0) -> tuple[list, list[float], list[dict]]:
    """Plays one episode with ``actions`` (one row per group); returns observations, rewards and infos."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for i, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert terminated == (i == len(actions) - 1) and not truncated
    return observations, rewards, infos


def _action_patterns(n_groups: int, episodes: int, seed: int) -> list[np.ndarray]:
    """Extremes (all -1: the wall does all the work; all +1), greedy-early, uniform and out-of-range."""
    rng = np.random.default_rng(seed)
    patterns = [
        np.full((n_groups, 1), -1.0),
        np.full((n_groups, 1), 1.0),
        np.concatenate([np.full((n_groups // 2, 1), -1.0), np.full((n_groups - n_groups // 2, 1), 1.0)]),
    ]
    while len(patterns) < episodes:
        scale = 3.0 if len(patterns) % 3 == 0 else 1.0
        patterns.append((rng.uniform(-1, 1, (n_groups, 1)) * scale).astype(np.float32))
    return patterns


BUDGET_CASES = [  # model, metric, target, round_to
    ("resnet20", "flops", 0.4, 1),
    ("resnet20", "params", 0.35, 1),
    ("resnet20", "flops", 0.45, 4),
    ("vgg_small", "flops", 0.3, 1),
    ("vgg_small", "params", 0.3, 1),
    ("torchvision:mobilenet_v2", "flops", 0.5, 1),
    ("torchvision:mobilenet_v2", "params", 0.4, 1),
]


@pytest.mark.parametrize(("model", "metric", "target", "round_to"), BUDGET_CASES)
def test_budget_holds_on_exact_and_physical_count(model: str, metric: str, target: float, round_to: int) -> None:
    config = EnvConfig(model=model, target_metric=metric, target_ratio=target, max_ratio=0.8, round_to=round_to, **TINY)
    env = ChannelPruningEnv.from_config(config)
    dense, walled = env.dense_cost, 0
    for actions in _action_patterns(len(env.group_names), episodes=30, seed=len(model)):
        _, _, infos = _episode(env, actions)
        last = infos[-1]
        assert last[f"{metric}_ratio"] == last["cost_ratio"] <= target, f"budget broken by {actions.ravel()}"
        counted = count_cost(env.last_model, env.graph.example_inputs)
        assert (counted.flops, counted.params) == (last["flops"], last["params"])
        assert (
            counted.flops / dense.flops == last["flops_ratio"] and counted.params / dense.params == last["params_ratio"]
        )
        assert widths_for(env.graph, last["ratios"], round_to) == {i["group"]: i["kept"] for i in infos[1:]}
        assert all(i["kept"] % round_to == 0 or i["kept"] == env.graph.group(i["group"]).channels for i in infos[1:])
        assert all(config.min_ratio <= r <= config.max_ratio for r in last["ratios"].values())
        walled += sum(i["walled"] for i in infos[1:])
    assert walled > 0, "the target should be tight enough for the wall to act in some episodes"


# Concatenation (densenet121: 120 groups), squeeze-excite multiplications (efficientnet_b0), a deep residual net
# (resnet56) and a plain one (plain20); torchvision nets need 32x32 inputs. Episodes per model: few for the slow ones.
RANDOM_BUDGET_CASES = [  # model, input size, metric, target, episodes
    ("torchvision:densenet121", 32, "flops", 0.5, 3),
    ("torchvision:efficientnet_b0", 32, "flops", 0.5, 5),
    ("resnet56", 0, "flops", 0.4, 12),
    ("resnet56", 0, "params", 0.4, 6),
    ("plain20", 0, "flops", 0.3, 12),
]


@pytest.mark.parametrize(("model", "size", "metric", "target", "episodes"), RANDOM_BUDGET_CASES)
def test_budget_holds_under_random_actions(model: str, size: int, metric: str, target: float, episodes: int) -> None:
    config = EnvConfig(
        model=model,
        data=DataConfig("digits", input_size=size),
        target_metric=metric,
        target_ratio=target,
        max_ratio=0.8,
        **TINY,
    )
    env = ChannelPruningEnv.from_config(config)
    n = len(env.group_names)
    rng = np.random.default_rng(7)
    # the first episode asks for no pruning at all (the wall must do all the work); the rest are random
    plans = [np.full((n, 1), -1.0, dtype=np.float32)] + [
        rng.uniform(-1, 1, (n, 1)).astype(np.float32) for _ in range(episodes - 1)
    ]
    for episode, actions in enumerate(plans):
        _, _, infos = _episode(env, actions, seed=episode)
        last = infos[-1]
        assert 0 < last["cost_ratio"] <= target, f"{model}: episode {episode} keeps {last['cost_ratio']:.4f} > {target}"
        assert last[f"{metric}_ratio"] == last["cost_ratio"]
        assert all(config.min_ratio <= r <= config.max_ratio for r in last["ratios"].values())
    counted = count_cost(env.last_model, env.graph.example_inputs)  # the last pruned model, physically counted
    assert (counted.flops, counted.params) == (last["flops"], last["params"])


@pytest.mark.parametrize("round_to", [1, 4])
def test_wall_keeps_the_most_channels_the_budget_allows(round_to: int) -> None:
    ws = build_workspace("torchvision:mobilenet_v2", DataConfig("digits"))
    cost = create_cost_model("flops", ws.graph)
    wall = BudgetWall(ws.graph.groups, cost, 0.45, 0.1, 0.7, round_to)
    rng = np.random.default_rng(round_to)
    decided: dict[str, int] = {}
    walled = 0
    for index, group in enumerate(ws.graph.groups):
        ratio = float(rng.uniform(0.1, 0.3))  # ask for little pruning so that the wall acts
        choice = wall.choose(decided, index, ratio)
        assert kept_channels(group.channels, choice.ratio, round_to) == choice.kept
        options = sorted({kept_channels(group.channels, r, round_to) for r in np.linspace(0.1, 0.7, 5000)})
        fits = [
            k
            for k in options
            if k <= kept_channels(group.channels, ratio, round_to)
            and wall.meets({**wall.fewest, **decided, group.name: k})
        ]
        assert choice.kept == max(fits)  # brute force: the largest feasible kept count, not less
        decided[group.name] = choice.kept
        walled += choice.walled
    assert wall.meets(decided) and walled > 0


def test_applied_actions_replay_the_walled_episode() -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(target_ratio=0.4, min_ratio=0.05, **TINY))
    _, _, infos = _episode(env, np.full((len(env.group_names), 1), -1.0))
    first = infos[-1]["ratios"]
    assert any(i["walled"] for i in infos[1:])
    applied = np.array([[i["applied_action"]] for i in infos[1:]], np.float32)  # as a replay buffer stores them
    _, _, replayed = _episode(env, applied)
    assert replayed[-1]["ratios"] == pytest.approx(first) and not any(i["walled"] for i in replayed[1:])
    assert [i["kept"] for i in replayed[1:]] == [i["kept"] for i in infos[1:]]


def test_walk_meets_what_step_meets_without_evaluating() -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(target_ratio=0.3, **TINY))
    patterns = _action_patterns(len(env.group_names), 6, seed=3)
    stacked = np.stack([p.reshape(-1) for p in patterns]).astype(np.float32)
    calls = []

    def policy(index: int, observations: np.ndarray) -> np.ndarray:
        calls.append(index)
        assert observations.shape == (len(patterns), *env.observation_space.shape)
        return stacked[:, index]

    observations, applied = env.walk(policy, len(patterns))
    assert calls == list(range(len(env.group_names)))
    assert observations.shape == (len(patterns), len(env.group_names) + 1, *env.observation_space.shape)
    for row, pattern in enumerate(patterns):
        stepped, _, infos = _episode(env, pattern)
        assert np.array_equal(np.stack(stepped), observations[row])  # the same observations, the terminal one too
        assert np.array_equal(applied[row], np.array([i["applied_action"] for i in infos[1:]], np.float32))
        assert infos[-1]["cost_ratio"] <= env.wall.target_ratio


@pytest.mark.parametrize("target", [0.25, 0.6])
def test_fit_ratios_keeps_the_policy_shape_and_uses_the_budget(target: float) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(target_ratio=target, **TINY))
    names = env.group_names
    policy = {n: 0.6 * (i % 3) / 2 for i, n in enumerate(names)}  # 0, 0.3, 0.6, 0, ...: 40% of the FLOPs or so
    fitted = env.fit_ratios(policy)
    assert env.wall.meets(env.widths(fitted))
    assert env.evaluate_ratios(fitted)["flops_ratio"] >= target - 0.05, "it uses the budget, over or under it"
    shift = {round(env.ratio_to_action(fitted[n]) - env.ratio_to_action(policy[n]), 9) for n in names
             if env.config.min_ratio < fitted[n] < env.config.max_ratio}  # fmt: skip
    assert len(shift) == 1, "one shift of every action (groups pinned at a bound aside)"
    uniform = env.fit_ratios(dict.fromkeys(names, 0.0))
    assert env.widths(uniform) == env.widths(env.uniform_ratios()), "a uniform policy fits to the uniform baseline"


def test_registered_and_made_with_gymnasium(checkpoint: str) -> None:
    env = gymnasium.make(ENV_ID, config=EnvConfig(checkpoint=checkpoint, **TINY))
    assert env.spec is not None and env.spec.id == ENV_ID
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and info["group"] == env.unwrapped.group_names[0]
    assert gymnasium.make(ENV_ID, checkpoint=checkpoint, target_ratio=0.7, **TINY).unwrapped.config.target_ratio == 0.7


def test_gymnasium_and_sb3_check_env(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, **TINY))
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_same_seed_same_rollout(checkpoint: str) -> None:
    config = EnvConfig(checkpoint=checkpoint, bn_batches=2, bn_batch_size=32, eval_batches=1)
    a, b = ChannelPruningEnv.from_config(config), ChannelPruningEnv.from_config(config)
    for seed in (0, 1):
        actions = np.random.default_rng(seed).uniform(-1, 1, (len(a.group_names), 1)).astype(np.float32)
        obs_a, rew_a, info_a = _episode(a, actions, seed)
        obs_b, rew_b, info_b = _episode(b, actions, seed)
        assert all(np.array_equal(x, y) for x, y in zip(obs_a, obs_b, strict=True))
        assert rew_a == rew_b and info_a == info_b
        assert obs_a[0] is not obs_a[1] and info_a[-1] is not info_a[-2]


@pytest.mark.parametrize("reward", REWARDS.names())
def test_every_reward_pays_at_the_last_step_only(checkpoint: str, reward: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, reward=reward, size_lambda=0.5, **TINY))
    actions = np.zeros((len(env.group_names), 1), np.float32)
    _, rewards, infos = _episode(env, actions)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1) and math.isfinite(rewards[-1])
    last = infos[-1]
    expected = {
        "acc": last["top1"],
        "acc_log_flops": -(1 - last["top1"]) * math.log(last["flops"]),
        "acc_size": last["top1"] - 0.5 * last["flops_ratio"] / 0.5,
    }
    if reward in expected:
        assert rewards[-1] == pytest.approx(expected[reward])
    assert all("top1" not in info for info in infos[:-1]) and {"top1", "flops_ratio", "params_ratio", "ratios"} <= set(
        last
    )


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_runs_an_episode_within_budget(checkpoint: str, criterion: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, criterion=criterion, **TINY))
    _, rewards, infos = _episode(env, np.full((len(env.group_names), 1), -0.5))
    assert 0.0 <= rewards[-1] <= 1.0 and infos[-1]["flops_ratio"] <= 0.5
    assert count_cost(env.last_model, env.graph.example_inputs).flops == infos[-1]["flops"]


def test_actions_are_clipped_and_invalid_ones_rejected(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, target_ratio=0.9, min_ratio=0.1, **TINY))
    env.reset(seed=0)
    for raw, edge in ((np.array([7.0]), 1.0), (np.array([-5.0]), -1.0), (3.0, 1.0)):
        info = env.step(raw)[4]
        assert info["ratio"] == pytest.approx(0.1 + (edge + 1) / 2 * 0.7) and info["applied_action"] == pytest.approx(
            edge
        )
    for bad in (np.array([np.nan]), np.array([0.1, 0.2]), np.array([np.inf])):
        with pytest.raises(InvalidActionError):
            env.step(bad)
    obs = env.step(np.array([0.0], np.float32))[0]
    assert obs in env.observation_space


def test_observations_lie_in_the_declared_space(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, **TINY))
    features = len(envs.FEATURES) + len(env.group_names)  # AMC's eleven, then the history
    assert env.observation_space.shape == (features,) and env.action_space.shape == (1,)
    observations, _, _ = _episode(env, np.random.default_rng(5).uniform(-1, 1, (len(env.group_names), 1)))
    assert all(o.dtype == np.float32 and o in env.observation_space for o in observations)
    index = envs.FEATURES.index("index")
    assert observations[0][index] == 0.0 and observations[-2][index] == 1.0  # min-max over the groups
    with pytest.raises(ResetNeeded):
        env.step(np.zeros(1, np.float32))


def test_history_features_hold_the_ratios_decided_so_far(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, **TINY))
    amc = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, observe_history=False, **TINY))
    assert amc.observation_space.shape == (len(envs.FEATURES),)
    actions = np.random.default_rng(6).uniform(-1, 1, (len(env.group_names), 1))
    observations, _, infos = _episode(env, actions)
    plain, _, _ = _episode(amc, actions)
    history = np.stack(observations)[:, len(envs.FEATURES) :]
    assert np.array_equal(np.stack(observations)[:, : len(envs.FEATURES)], np.stack(plain))  # AMC's part unchanged
    assert not history[0].any()  # nothing decided at the start
    channels = [env.graph.group(name).channels for name in env.group_names]
    for step in range(1, len(infos)):
        expected = [1 - infos[i]["kept"] / c if i <= step else 0.0 for i, c in enumerate(channels, start=1)]
        assert history[step] == pytest.approx(expected, abs=1e-6)  # decided groups' ratios, the rest 0
    with pytest.raises(ConfigError, match="observe_history"):
        EnvConfig(observe_history="yes", **TINY)


def test_impossible_target_raises_budget_error() -> None:
    with pytest.raises(BudgetError, match="out of reach"):
        ChannelPruningEnv.from_config(EnvConfig(target_ratio=0.05, max_ratio=0.5, **TINY))
    with pytest.raises(BudgetError):
        gymnasium.make(ENV_ID, target_metric="params", target_ratio=0.1, max_ratio=0.5, **TINY)


def test_invalid_config_is_rejected_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="min_ratio"):
        EnvConfig(min_ratio=0.5, max_ratio=0.4)
    with pytest.raises(ConfigError, match="acc_log_flops"):
        EnvConfig(reward="nope")
    with pytest.raises(ConfigError, match="flops"):
        EnvConfig(target_metric="energy")
    assert EnvConfig(data={"name": "digits", "seed": 1}).data == DataConfig("digits", seed=1)  # as YAML gives it
    with pytest.raises(ConfigError, match="unknown field"):
        EnvConfig(data={"nmae": "digits"})


def test_recalibrated_uniform_baseline_and_test_split(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, target_ratio=0.5))
    uniform = env.uniform_ratios()
    val = env.evaluate_ratios(uniform)
    assert val["meets_target"] == 1.0 and 0.45 < val["flops_ratio"] <= 0.5
    assert val["top1"] >= 0.85  # measured 95% with BatchNorm re-estimation (chance without it)
    assert env.evaluate_ratios(uniform, split="test")["top1"] >= 0.85
    with pytest.raises(ConfigError, match="no prunable groups"):
        env.evaluate_ratios({"not.a.layer": 0.5})


def test_fixed_shape_evaluation_matches_the_engine(checkpoint: str) -> None:
    ws = build_workspace("resnet20", DataConfig("digits"), checkpoint)
    loader = ws.data.loader("val", 100)
    batches = envs.fixed_size_batches(loader, 64)
    assert [b.count for b in batches] == [64, 64, 64, 64, 44] and all(len(b.inputs) == 64 for b in batches)
    assert envs.top1(ws.model, batches) == evaluate(ws.model, loader)
    config = EnvConfig(checkpoint=checkpoint, bn_batches=2)
    cached, streamed = (
        ChannelPruningEnv.from_config(config),
        ChannelPruningEnv.from_config(config.replace(cache_eval=False)),
    )
    ratios = cached.uniform_ratios()
    assert cached.evaluate_ratios(ratios)["top1"] == pytest.approx(
        streamed.evaluate_ratios(ratios)["top1"], abs=1 / 300
    )


def test_episode_result_matches_direct_evaluation_and_engine(checkpoint: str) -> None:
    env = ChannelPruningEnv.from_config(EnvConfig(checkpoint=checkpoint, bn_batches=2, eval_batches=1))
    _, rewards, infos = _episode(env, np.random.default_rng(2).uniform(-1, 1, (len(env.group_names), 1)))
    direct = env.evaluate_ratios(infos[-1]["ratios"])
    assert direct["top1"] == infos[-1]["top1"] == rewards[-1] and direct["flops"] == infos[-1]["flops"]
    policy = env.to_policy(infos[-1]["ratios"], {"top1": direct["top1"]})
    pruned = apply_policy(env.model, policy, env.graph.example_inputs, graph=env.graph)
    assert count_cost(pruned, env.graph.example_inputs) == count_cost(env.last_model, env.graph.example_inputs)


def test_built_from_your_own_model_and_loaders(checkpoint: str) -> None:
    ws = build_workspace("resnet20", DataConfig("digits"), checkpoint)
    data = load_data(DataConfig("digits"))
    env = ChannelPruningEnv(
        ws.model,
        data.loader("train", 32, shuffle=True),
        data.loader("val", 100),
        torch.zeros(1, 1, 16, 16),
        EnvConfig(bn_batches=2, eval_batches=1, target_ratio=0.6),
    )
    assert env.group_names == ws.graph.names and env.identity.arch_hash == ws.identity.arch_hash
    _, rewards, infos = _episode(env, np.zeros((len(env.group_names), 1)))
    assert 0.0 <= rewards[-1] <= 1.0 and infos[-1]["flops_ratio"] <= 0.6
    with pytest.raises(ConfigError, match="test_loader"):
        env.evaluate_ratios(infos[-1]["ratios"], split="test")
