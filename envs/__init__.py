"""Gymnasium environments of amc-search.

Importing this package registers ``amc/ChannelPruning-v0`` (Gymnasium 1.x has no entry-point
auto-registration)::

    import gymnasium
    import envs
    env = gymnasium.make("amc/ChannelPruning-v0", config=envs.EnvConfig(target_ratio=0.5, checkpoint="model.pt"))
"""

from __future__ import annotations

import gymnasium

from envs.budget import BudgetWall, Choice
from envs.channel_pruning import ChannelPruningEnv, EnvConfig, InvalidActionError, make_env
from envs.costs import COST_MODELS, CostModel, create_cost_model
from envs.embedding import FEATURES, LayerEmbedding
from envs.evaluation import EvalBatch, fixed_size_batches, top1
from envs.rewards import REWARDS, Outcome, Reward, create_reward

ENV_ID = "amc/ChannelPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.channel_pruning:make_env")

__all__ = [
    "COST_MODELS",
    "ENV_ID",
    "FEATURES",
    "REWARDS",
    "BudgetWall",
    "ChannelPruningEnv",
    "Choice",
    "CostModel",
    "EnvConfig",
    "EvalBatch",
    "InvalidActionError",
    "LayerEmbedding",
    "Outcome",
    "Reward",
    "create_cost_model",
    "create_reward",
    "fixed_size_batches",
    "make_env",
    "top1",
]
