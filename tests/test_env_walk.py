"""The proposals' walk on arrays gives, bit for bit, what deciding each proposal on its own gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amc.cost import LatencyConfig
from amc.data import DataConfig
from amc.engine import Workspace, build_workspace
from amc.latency import LatencyTable
from envs import ChannelPruningEnv, EnvConfig
from envs.costs import LatencyCost

TINY = {"bn_batches": 1, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 2}
COUNT = 24


@pytest.fixture(scope="module")
def workspaces() -> dict[str, Workspace]:
    return {name: build_workspace(name, DataConfig("digits")) for name in ("resnet20", "mobilenetv2_small")}


def _walk_one_by_one(
    env: ChannelPruningEnv, actions: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each proposal decided alone with the single-episode wall and observation (what :meth:`step` does).

    Returns the observations, the applied actions and whether the wall cut each decision.
    """
    count, n = actions.shape
    observations = np.zeros((count, n + 1, env._embedding.size), dtype=np.float32)
    applied = np.zeros((count, n), dtype=np.float32)
    walled = np.zeros((count, n), dtype=bool)
    wall = env._wall_for(target)
    observations[:, 0] = env._embedding.observation(0, 0.0, 0.0, None, target)
    for i in range(count):
        kept: dict[str, int] = {}
        for index in range(n):
            choice = env._decide(kept, index, actions[i, index], wall)
            applied[i, index] = env.ratio_to_action(choice.ratio)
            walled[i, index] = choice.walled
            observations[i, index + 1] = env._observation_after(kept, index, choice.ratio, target)
    return observations, applied, walled


def _actions(n_groups: int, seed: int) -> np.ndarray:
    """Extremes (all -1, all +1, half and half), uniform in [-1, 1] and out of range (clipped by the env)."""
    rng = np.random.default_rng(seed)
    rows = [
        np.full(n_groups, -1.0),
        np.full(n_groups, 1.0),
        np.repeat([-1.0, 1.0], [n_groups // 2, n_groups - n_groups // 2]),
    ]
    rows += [rng.uniform(-1, 1, n_groups) * (3.0 if k % 3 == 0 else 1.0) for k in range(COUNT - len(rows))]
    actions = np.stack(rows).astype(np.float32)
    actions[rng.random(actions.shape) < 0.1] = -1.0
    return actions


def _check(env: ChannelPruningEnv, seed: int = 0, target: float | None = None) -> None:
    actions = _actions(len(env.group_names), seed)
    observations, applied = env.walk(lambda index, _: actions[:, index], COUNT, target)
    expected, expected_applied, walled = _walk_one_by_one(env, actions, env.target.ratio if target is None else target)
    assert walled.any() and not walled.all(), "the wall cuts some decisions and lets others through"
    assert observations.dtype == np.float32 and applied.dtype == np.float32
    np.testing.assert_array_equal(observations.view(np.uint32), expected.view(np.uint32))  # bit for bit
    np.testing.assert_array_equal(applied.view(np.uint32), expected_applied.view(np.uint32))


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        ("resnet20", {"target_ratio": 0.2}),
        ("resnet20", {"target_ratio": 0.5}),
        ("resnet20", {"target_metric": "params", "target_ratio": 0.3, "round_to": 4, "observe_history": False}),
        ("resnet20", {"target_metric": "params", "target_ratio": 0.4, "granularity": "unstructured"}),
        ("resnet20", {"target_metric": "params", "target_ratio": 0.6, "granularity": "nm", "max_ratio": 0.9}),
        ("mobilenetv2_small", {"target_ratio": 0.35}),
        ("mobilenetv2_small", {"target_metric": "params", "target_ratio": 0.3, "round_to": 8, "min_ratio": 0.1}),
    ],
)
def test_walk_decides_every_proposal_as_alone(model: str, settings: dict, workspaces: dict[str, Workspace]) -> None:
    env = ChannelPruningEnv.from_workspace(
        workspaces[model], EnvConfig(model=model, **settings, **TINY), progress=False
    )
    _check(env)


def test_walk_of_each_target_of_a_multi_target_env(workspaces: dict[str, Workspace]) -> None:
    env = ChannelPruningEnv.from_workspace(
        workspaces["resnet20"], EnvConfig(targets=[0.25, 0.5], **TINY), progress=False
    )
    for seed, target in enumerate((0.25, 0.5)):
        _check(env, seed, target)


def test_walk_with_a_cost_model_without_an_array_form(workspaces: dict[str, Workspace], tmp_path: Path) -> None:
    """The latency model's ratios are its ratio row by row: the walk's bisection asks it for the same widths."""
    ws = workspaces["resnet20"]
    config = LatencyConfig(min_run_time=0.002, grid=3)

    def measure(module: object, shape: tuple[int, ...], settings: LatencyConfig) -> float:
        return 1e-3 * (1 + sum(p.numel() for p in module.parameters()) + int(np.prod(shape)))

    table = LatencyTable.build(ws.model, ws.graph, config, cache_dir=tmp_path, progress=False, measure=measure)
    cost = LatencyCost(ws.graph, table)
    env_config = EnvConfig(target_metric="latency", target_ratio=0.9, max_ratio=0.8, latency=config, **TINY)
    env = ChannelPruningEnv.from_workspace(ws, env_config, cost_model=cost, progress=False)
    _check(env)
