"""The strong baselines (global, sensitivity, tpe): budget, determinism, and end to end in ``amc search``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.base import AGENTS, create_agent
from agents.baselines import action_for_kept, global_kept, sensitivity_curves, sensitivity_kept
from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_episode, run_search
from amc.cli.search import AGENT_NAMES
from amc.pruning import kept_channels
from envs import ChannelPruningEnv, EnvConfig

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
BASELINES = ("uniform", "global", "sensitivity", "random", "tpe")


@pytest.fixture(scope="module")
def env(trained_resnet20: Path) -> ChannelPruningEnv:
    config = EnvConfig(checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.3, max_ratio=0.9, **TINY)
    return ChannelPruningEnv.from_config(config)


def _play(env: ChannelPruningEnv, name: str, seed: int, episodes: int) -> list[tuple[dict[str, float], float]]:
    agent = create_agent(name, env, DDPGConfig(), seed)
    out = []
    for episode in range(1 if agent.single_episode else episodes):
        record, _ = run_episode(env, agent, episode)
        out.append((record.ratios, record.flops_ratio))
    return out


def test_cli_offers_every_registered_agent() -> None:
    assert sorted(AGENT_NAMES) == sorted(AGENTS.names())


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_meets_budget_and_is_deterministic(env: ChannelPruningEnv, name: str) -> None:
    first = _play(env, name, seed=5, episodes=4)
    assert first == _play(env, name, seed=5, episodes=4), f"{name} is deterministic under a seed"
    assert all(flops <= env.config.target_ratio + 1e-12 for _, flops in first)
    if name in ("random", "tpe"):
        assert len({tuple(r.values()) for r, _ in first}) == len(first), "distinct policies per episode"


def test_fixed_policies_pass_the_wall_unchanged(env: ChannelPruningEnv) -> None:
    """global picks widths that meet the target, so the wall never cuts them and the env keeps them exactly."""
    kept = global_kept(env)
    assert env.wall.meets(kept)
    actions = create_agent("global", env, DDPGConfig(), 0).plan(0).actions
    env.reset(seed=0)
    for name, action in zip(env.group_names, actions, strict=True):
        _, _, _, _, info = env.step(np.array([action], dtype=np.float32))
        assert info["kept"] == kept[name] and not info["walled"]
    for name in env.group_names:  # the action chosen for any count maps back to exactly that count
        channels = env.graph.group(name).channels
        for count in env.wall.options(name)[0]:
            ratio = env._action_to_ratio(np.float32(action_for_kept(env, name, count)))
            assert kept_channels(channels, ratio) == count


def test_global_is_one_threshold(env: ChannelPruningEnv) -> None:
    """A tighter target never gives any group more channels (one threshold across the network)."""
    kept_30 = global_kept(env)
    kept_20 = global_kept(ChannelPruningEnv.from_config(env.config.replace(target_ratio=0.2)))
    assert all(kept_20[n] <= kept_30[n] for n in kept_30)
    assert sum(kept_20.values()) < sum(kept_30.values()) < sum(g.channels for g in env.graph)


def test_sensitivity_prunes_the_robust_groups_more(env: ChannelPruningEnv) -> None:
    """A group whose curve says pruning costs nothing is pruned at least as far as one that collapses."""
    curves = {name: [(0.0, 0.0), (0.5, 0.0), (0.9, 0.0)] for name in env.group_names}
    fragile = env.group_names[0]
    curves[fragile] = [(0.0, 0.0), (0.5, 0.5), (0.9, 0.9)]
    kept = sensitivity_kept(env, curves)
    assert env.wall.meets(kept)
    channels = {g.name: g.channels for g in env.graph}
    assert kept[fragile] == channels[fragile], "the fragile group stays dense while free pruning remains"
    real = sensitivity_curves(env, levels=(0.5,))
    assert set(real) == set(env.group_names)
    assert all(points[0] == (0.0, 0.0) and all(d >= 0 for _, d in points) for points in real.values())


@pytest.mark.parametrize("agent", ["tpe", "global", "sensitivity"])
def test_baselines_end_to_end_in_amc_search(trained_resnet20: Path, tmp_path: Path, agent: str) -> None:
    env_config = EnvConfig(checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.5, **TINY)
    config = SearchConfig(env=env_config, agent=agent, episodes=4, seed=1, checkpoint_every=2, workers=0)
    result = run_search(config, tmp_path / agent, track=False, progress=False)
    summary = json.loads((tmp_path / agent / "search.json").read_text())
    assert summary["agent"] == agent
    assert len(summary["episodes"]) == (4 if agent == "tpe" else 1)
    assert result.best.flops_ratio <= 0.5
    assert (tmp_path / agent / "best_policy.json").is_file()


def test_tpe_from_the_command_line(trained_resnet20: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"agent: ddpg\nepisodes: 3\nworkers: 0\nenv:\n  checkpoint: {trained_resnet20 / 'model.pt'}\n  target_ratio: 0.5\n"
        + "".join(f"  {k}: {v}\n" for k, v in TINY.items())
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amc.cli",
            "search",
            "--config",
            str(config),
            "--agent",
            "tpe",
            "--no-tracking",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads((tmp_path / "out" / "search.json").read_text())["episodes"]) == 3
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "amc.cli",
            "search",
            "--config",
            str(config),
            "--agent",
            "tpee",
            "--no-tracking",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert not (tmp_path / "bad").exists()
