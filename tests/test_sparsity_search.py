"""AMC's compression mode: a search over per-layer sparsity under a non-zero-parameter budget, and its export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_search
from amc.checkpoint import load_model, save_model
from amc.cost import count_nonzero_params
from amc.errors import ConfigError
from amc.policy import load_policy
from amc.pruning import sparsify
from amc.sparse_export import load_sparse, save_sparse
from envs import ChannelPruningEnv
from envs.channel_pruning import EnvConfig


def _env(checkpoint: Path, granularity: str, target: float) -> ChannelPruningEnv:
    config = EnvConfig(
        checkpoint=str(checkpoint),
        target_metric="params",
        target_ratio=target,
        granularity=granularity,
        max_ratio=0.95,
        eval_batches=1,
        bn_batches=2,
    )
    return ChannelPruningEnv.from_config(config)


@pytest.mark.parametrize(("granularity", "target"), [("unstructured", 0.25), ("nm", 0.6)])
def test_random_sparsity_episodes_meet_the_nonzero_params_budget_exactly_counted(
    trained_resnet20: Path, granularity: str, target: float
) -> None:
    env = _env(trained_resnet20 / "model.pt", granularity, target)
    rng = np.random.default_rng(0)
    dense = env.graph.dense_cost.params
    for episode in range(5):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([rng.uniform(-1, 1)], dtype=np.float32))
        policy = env.to_policy(info["ratios"])
        assert policy.granularity == granularity
        nonzero = count_nonzero_params(sparsify(env.model, env.graph, policy.ratios, granularity))
        assert nonzero <= target * dense
        assert nonzero == round(info["params_ratio"] * dense)  # the search's count is the applied model's
        assert info["flops_ratio"] == 1.0  # zeroed weights make no FLOPs claim


def test_a_sparsity_search_writes_a_policy_amc_prune_applies_and_its_masks_survive_save_and_load(
    trained_resnet20: Path, tmp_path: Path
) -> None:
    env = EnvConfig(
        checkpoint=str(trained_resnet20 / "model.pt"),
        target_metric="params",
        target_ratio=0.3,
        granularity="unstructured",
        max_ratio=0.95,
        eval_batches=1,
        bn_batches=2,
    )
    config = SearchConfig(
        env=env, agent="ddpg", episodes=4, ddpg=DDPGConfig(hidden=(16, 16), warmup_episodes=2), workers=0
    )
    run_search(config, tmp_path / "s", track=False, progress=False)
    policy = load_policy(tmp_path / "s" / "best_policy.json")
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert policy.granularity == "unstructured" and summary["best"]["params_ratio"] <= 0.3

    saved = load_model(trained_resnet20 / "model.pt")
    from amc.groups import ModelGraph

    graph = ModelGraph(saved.model, saved.spec.example_inputs())
    sparse = sparsify(saved.model, graph, policy.ratios, "unstructured")
    assert count_nonzero_params(sparse) <= 0.3 * graph.dense_cost.params
    size = save_sparse(tmp_path / "m.sparse.npz", sparse)
    assert size * 2 < save_sparse(tmp_path / "dense.npz", saved.model)
    restored = load_sparse(tmp_path / "m.sparse.npz")
    for name, tensor in sparse.state_dict().items():
        assert torch.equal(restored[name], tensor), name
    save_model(tmp_path / "m.pt", sparse, saved.spec, policy)
    again = load_model(tmp_path / "m.pt").model
    assert count_nonzero_params(again) == count_nonzero_params(sparse)


def test_a_sparsity_search_budgets_params_only() -> None:
    with pytest.raises(ConfigError, match="target_metric: params"):
        EnvConfig(granularity="unstructured", target_metric="flops")
    with pytest.raises(ConfigError, match="granularity"):
        EnvConfig(granularity="blocks")
