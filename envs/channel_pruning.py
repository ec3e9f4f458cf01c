"""The AMC channel-pruning environment: one episode decides the pruning ratio of every group.

Build it from a config (:meth:`ChannelPruningEnv.from_config`, or ``gymnasium.make("amc/ChannelPruning-v0",
config=EnvConfig(...))`` after ``import envs``) or from your own model and data loaders
(:class:`ChannelPruningEnv` itself).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from torch import nn

from amc.cost import Cost, LatencyConfig
from amc.data import DataConfig
from amc.engine import Workspace, build_workspace, smallest_ratio
from amc.errors import AmcError, BudgetError, ConfigError
from amc.groups import ModelGraph
from amc.policy import ModelIdentity, Policy, Target
from amc.pruning import (
    CRITERIA,
    DEFAULT_CRITERION,
    GRANULARITIES,
    ChannelPruner,
    build_graph,
    prune_channels,
    sparsify,
    sparsity_ratios,
    widths_for,
)
from amc.reconstruct import reconstruct
from amc.train import CALIBRATION_BATCH_SIZE, draw_calibration, evaluate, recalibrate_bn_seeded
from envs.budget import BudgetWall, Choice, fewest_widths
from envs.costs import COST_MODELS, CostModel, LatencyCost, create_cost_model
from envs.embedding import LayerEmbedding
from envs.evaluation import EvalBatch, evaluation_fingerprint, fixed_size_batches, real_images, top1
from envs.rewards import REWARDS, Outcome, Reward, create_reward
from envs.targets import TargetRange, contains, parse_targets, smallest

Batch = tuple[torch.Tensor, torch.Tensor]
Calibration = tuple[list[torch.Tensor], Batch | None]
"""The fixed BatchNorm calibration inputs and the batch of gradient-based criteria (None without one)."""


class InvalidActionError(AmcError, ValueError):
    """An action is not a single finite number."""


@dataclass(frozen=True)
class EnvConfig:
    """Settings of the channel-pruning environment.

    ``model``, ``data``, ``checkpoint`` and ``bn_batch_size`` are used by :meth:`ChannelPruningEnv.from_config`
    only: an env built from your own model and loaders uses those.

    Attributes:
        model: Registered model name (``resnet20``, ``torchvision:mobilenet_v2``, ...).
        data: Data set and split settings.
        checkpoint: Dense checkpoint to load (None: random initial weights, for smoke runs only).
        target_metric: Budgeted cost, a name in :data:`envs.costs.COST_MODELS` (``flops``, ``params``,
            ``latency``: milliseconds per forward pass estimated from a table of measured layer latencies,
            built or read from the cache when the env is built; see :mod:`amc.latency`).
        target_ratio: Fraction of the dense cost the pruned model may keep, in (0, 1] (for ``latency``: of
            the dense model's estimated latency, which is its measured latency).
        target_ms: With ``target_metric: latency``, an absolute budget in milliseconds per forward pass
            instead of ``target_ratio`` (None: use ``target_ratio``). The env turns it into the ratio
            ``target_ms / dense latency`` once the latency table is built (:attr:`ChannelPruningEnv.target`),
            and refuses a budget at or above the dense model's latency (nothing to prune).
        min_ratio: Pruning ratio (fraction of channels removed) that action -1 maps to.
        max_ratio: Pruning ratio that action +1 maps to; below 1.
        reward: Reward name in :data:`envs.rewards.REWARDS` (``acc``, ``acc_log_flops``, ``acc_size``).
        size_lambda: Weight of the size term of the ``acc_size`` reward.
        criterion: Importance criterion that picks the removed channels (``l1``, ``l2``, ``bn_scale``, ``taylor``).
        round_to: Kept channel counts are rounded to a multiple of this.
        bn_batches: Training batches that re-estimate BatchNorm statistics before each evaluation (0: off;
            without it a pruned residual network can fall to chance accuracy). The batches are drawn once
            and reused, so the reward of a policy does not change from episode to episode.
        bn_batch_size: Images per BatchNorm calibration batch.
        eval_batch_size: Images per evaluation batch. With ``cache_eval`` the split is re-batched to exactly
            this size (the last batch padded, the padding not counted); equal to ``bn_batch_size``, every
            forward pass of an episode has one input shape, which saves CPU kernel creation on each newly
            pruned model (see :mod:`envs.evaluation`).
        eval_batches: Evaluate on the first this many batches of the split only (0: the whole split).
        cache_eval: Keep the evaluation split in memory, re-batched (turn off for large data sets; the
            loader's own batches are then used).
        seed: Seed of the calibration batches' draw, of torch during BatchNorm re-estimation and of the
            reconstruction's position sampling.
        reconstruct: Refit, after pruning and before BatchNorm re-estimation, every conv / linear layer whose
            input channels were removed by least squares so that it reproduces the dense layer's output
            (AMC's channel reconstruction, :func:`amc.reconstruct.reconstruct`). Measured on digits
            ResNet-20 with uniform pruning: test top-1 57% -> 98% at 20% FLOPs, 92% -> 99.7% at 50%;
            an evaluation took ~235 ms instead of ~125 ms (2 batches; ~50 ms per batch). Needs
            ``bn_batches >= reconstruct_batches``.
        reconstruct_batches: How many of the (first) BatchNorm calibration batches the reconstruction fits on.
        latency: How latency is measured when ``target_metric`` is ``latency`` (batch size, threads, device,
            dtype, seconds per entry, grid widths per axis); ignored otherwise.
        observe_history: Append to AMC's eleven features the pruning ratio of every group decided so far
            (one feature per group, 0 while undecided; :mod:`envs.embedding`), so that the last step's
            observation and action are the whole policy. False gives AMC's observation.
        targets: Several budgets in one search (None: the one ``target_ratio``): a list of ratios, each episode
            getting one of them, or a range ``{low: L, high: H}``, each episode drawing one in it
            (:mod:`envs.targets`). The episode's target is the last feature of the observation and the budget
            wall holds the episode to it; ``target_ratio`` is the target until the first :meth:`reset`. FLOPs
            and params budgets only.
        granularity: What a group's decision removes: ``channel`` (whole channels: AMC's acceleration mode),
            or ``unstructured`` / ``nm`` (AMC's compression mode: the group's layers sparsified, keeping
            ``kept / channels`` of their weights by magnitude, or 2:4 sparsity wherever a group is pruned at all;
            see :func:`amc.pruning.sparsity_ratios`). The sparse granularities budget the non-zero parameters:
            ``target_metric: params``.
    """

    model: str = "resnet20"
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: str | None = None
    target_metric: str = "flops"
    target_ratio: float = 0.5
    target_ms: float | None = None
    min_ratio: float = 0.0
    max_ratio: float = 0.8
    reward: str = "acc"
    size_lambda: float = 1.0
    criterion: str = DEFAULT_CRITERION
    round_to: int = 1
    bn_batches: int = 8
    bn_batch_size: int = CALIBRATION_BATCH_SIZE
    eval_batch_size: int = 64
    eval_batches: int = 0
    cache_eval: bool = True
    seed: int = 0
    reconstruct: bool = False
    reconstruct_batches: int = 2
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    observe_history: bool = True
    targets: tuple[float, ...] | TargetRange | None = None
    granularity: str = "channel"

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):  # from YAML / JSON: {name: digits, ...}
            try:
                object.__setattr__(self, "data", DataConfig(**self.data))
            except TypeError as exc:
                raise ConfigError(f"env.data has an unknown field: {exc}") from None
        if not isinstance(self.data, DataConfig):
            raise ConfigError(
                f"env.data must be a DataConfig or a mapping of its fields, got {type(self.data).__name__}"
            )
        if isinstance(self.latency, Mapping):
            try:
                object.__setattr__(self, "latency", LatencyConfig(**self.latency))
            except TypeError as exc:
                raise ConfigError(f"env.latency has an unknown field: {exc}") from None
        if not isinstance(self.latency, LatencyConfig):
            raise ConfigError(
                f"env.latency must be a LatencyConfig or a mapping of its fields, got {type(self.latency).__name__}"
            )
        if not 0.0 <= self.min_ratio <= self.max_ratio < 1.0:
            raise ConfigError(
                f"need 0 <= min_ratio <= max_ratio < 1 (fractions of channels removed), "
                f"got min_ratio={self.min_ratio}, max_ratio={self.max_ratio}"
            )
        if not 0.0 < self.target_ratio <= 1.0:
            raise ConfigError(
                f"target_ratio {self.target_ratio} must be in (0, 1] (the kept fraction of the dense cost)"
            )
        self._check_target_ms()
        for name, value, low in (
            ("round_to", self.round_to, 1),
            ("bn_batches", self.bn_batches, 0),
            ("bn_batch_size", self.bn_batch_size, 1),
            ("eval_batch_size", self.eval_batch_size, 1),
            ("eval_batches", self.eval_batches, 0),
        ):
            if int(value) != value or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        self._check_reconstruct()
        if not isinstance(self.observe_history, bool):
            raise ConfigError(f"observe_history must be true or false, got {self.observe_history!r}")
        self._check_targets()
        self._check_granularity()
        COST_MODELS.get(self.target_metric)
        REWARDS.get(self.reward)
        CRITERIA.get(self.criterion)
        create_reward(self.reward, self.size_lambda)  # validates size_lambda

    def _check_target_ms(self) -> None:
        if self.target_ms is None:
            return
        if isinstance(self.target_ms, bool) or not isinstance(self.target_ms, (int, float)):
            raise ConfigError(f"target_ms must be a number of milliseconds, got {self.target_ms!r}")
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise ConfigError(f"target_ms must be a positive number of milliseconds, got {self.target_ms!r}")
        if self.target_metric != "latency":
            raise ConfigError(
                f"target_ms budgets milliseconds and needs target_metric: latency (got {self.target_metric!r}); "
                "set target_metric: latency, or budget with target_ratio"
            )

    def _check_targets(self) -> None:
        object.__setattr__(self, "targets", parse_targets(self.targets))
        if self.targets is None:
            return
        if self.target_metric == "latency" or self.target_ms is not None:
            raise ConfigError(
                "env.targets budgets flops or params; a latency search takes one target_ratio or target_ms"
            )

    def _check_granularity(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity {self.granularity!r} is unknown; use one of {', '.join(GRANULARITIES)}")
        if self.granularity == "channel":
            return
        if self.target_metric != "params":
            raise ConfigError(
                f"granularity {self.granularity} zeroes weights: it makes no {self.target_metric} claim; budget the "
                "non-zero parameters with target_metric: params"
            )
        if self.reconstruct:
            raise ConfigError("reconstruct refits layers after channel removal; turn it off for a sparsity search")

    @property
    def sparse(self) -> bool:
        """Whether the search decides per-layer sparsity (``unstructured`` / ``nm``) rather than channels."""
        return self.granularity != "channel"

    def _check_reconstruct(self) -> None:
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"reconstruct must be true or false, got {self.reconstruct!r}")
        if int(self.reconstruct_batches) != self.reconstruct_batches or self.reconstruct_batches < 1:
            raise ConfigError(f"reconstruct_batches must be an integer >= 1, got {self.reconstruct_batches!r}")
        if self.reconstruct and self.reconstruct_batches > self.bn_batches:
            raise ConfigError(
                f"reconstruct_batches={self.reconstruct_batches} but only bn_batches={self.bn_batches} calibration "
                "batches are drawn; lower reconstruct_batches or raise bn_batches"
            )

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Evaluation:
    """A pruned model and what was measured on it.

    Attributes:
        model: The physically pruned, BatchNorm-recalibrated model.
        outcome: Accuracy and exact costs.
    """

    model: nn.Module
    outcome: Outcome


class ChannelPruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """AMC channel pruning as a Gymnasium environment (He et al., ECCV 2018).

    One episode walks the model's prunable dependency groups in forward order and decides, for each,
    the fraction of channels to remove. At the last group the model is pruned physically (channels
    removed with the configured importance criterion by :class:`amc.pruning.ChannelPruner`: the result of
    :func:`amc.pruning.prune_channels`, the code that applies exported policies, from one working copy
    restored in place instead of a fresh copy and trace per episode), optionally its layers are refitted to the dense layers' outputs
    (``config.reconstruct``, AMC's channel reconstruction), its BatchNorm statistics are re-estimated on
    a few fixed training batches, and it is evaluated on the search-val split without fine-tuning.
    Physical removal was measured cheaper than masking a persistent dense copy (digits ResNet-20 and
    ResNet-56, 50% FLOPs target, one thread: masked episodes took 1.4-1.5x as long with random policies and
    1.2x with policies at the target, since their forward passes run at full width); an episode costs 1.14-1.15x its BatchNorm re-estimation
    and evaluation forward passes (1.21-1.23x with a fresh copy pruned per episode); see
    ``experiments/bench/episode_cost.py``.

    ## Observation
    ``Box(0, 1, (11 + groups,), float32)``: AMC's layer embedding of the group about to be decided: index,
    kind (conv / depthwise / linear), input channels, output channels, spatial size, stride, kernel,
    the group's dense FLOPs (these eight min-max normalised over the groups), FLOPs reduced so far and
    FLOPs of the groups still to decide (fractions of the dense FLOPs), and the previous pruning ratio;
    then the history: the pruning ratio of every group decided so far (0 for the others), one feature per
    group, so that the last observation and action are the whole policy (``observe_history: false`` gives
    AMC's ``Box(0, 1, (11,))``). With several targets (``config.targets``) one more feature ends it: the
    episode's target ratio. See :mod:`envs.embedding`.

    ## Action
    ``Box(-1, 1, (1,), float32)``: mapped linearly to a pruning ratio in ``[min_ratio, max_ratio]``
    (-1 keeps the most channels). Values outside [-1, 1] are clipped; a non-finite action raises
    :class:`InvalidActionError`. The action wall then lowers the kept channels if needed, so that the
    target can still be met with every later group at ``max_ratio``: the wall works on integer kept
    counts with the exact cost model, so every episode ends within budget whatever the agent does.
    ``info["ratio"]`` and ``info["applied_action"]`` give the ratio applied and the action that maps
    to it.

    ## Starting state
    ``reset`` starts at the first group with nothing decided (FLOPs reduced 0, previous action 0). With
    ``config.targets``, ``reset(options={"target": t})`` sets the episode's target (one of them), else it is drawn
    from the seeded ``np_random``; ``info["target"]`` says which.

    ## Reward
    0 at every step but the last; at the last step the configured reward from :mod:`envs.rewards`
    (``acc``: top-1 on search-val; ``acc_log_flops``: ``-(1 - top1) * log(FLOPs)``; ``acc_size``:
    ``top1 - size_lambda * cost_ratio / target_ratio``).

    ## Episode end
    The episode terminates after the last group (one step per group, ``len(env.group_names)`` steps);
    it is never truncated. The last step's ``info`` holds ``top1``, ``flops``, ``params``,
    ``flops_ratio``, ``params_ratio``, ``cost_ratio`` (exact counts) and ``ratios`` (group name ->
    pruning ratio; ``amc.pruning.widths_for`` turns them back into the same widths); with a latency
    target also ``latency_ms`` and ``latency_ratio`` (the estimate).

    ## Determinism
    The environment draws no random numbers of its own: ``reset(seed=...)`` seeds Gymnasium's
    ``np_random``, and the BatchNorm re-estimation and the reconstruction's sampling run under torch
    generators seeded with ``config.seed``, so identical actions give identical observations, rewards
    and infos.

    Args:
        model: The dense, trained model (not modified).
        train_loader: Yields (inputs, targets); its first ``bn_batches`` batches re-estimate BatchNorm.
        val_loader: The search-val split the reward is measured on.
        example_inputs: A batch of example inputs (for tracing).
        config: Search settings; ``EnvConfig()`` when omitted.
        test_loader: The test split, for :meth:`evaluate_ratios` with ``split="test"``.
        selection_loader: The selection split (disjoint from search-val and test), for :meth:`evaluate_ratios`
            with ``split="selection"``: a search re-ranks its best policies on it (None: no selection split).
        graph: The traced groups of ``model`` if already built.
        cost_model: The cost model of ``config.target_metric`` for ``graph`` if already built (parallel
            workers get the learner's, so that a measured latency table is built once and shared).
        progress: Show the progress and cost of building a latency table (see :mod:`amc.latency`).
        calibration: The fixed calibration inputs and gradient batch another env of the same config drew
            (:attr:`calibration`; parallel workers get the learner's); ``train_loader`` is then not read (None).

    Raises:
        BudgetError: when the target is out of reach even with every group at ``max_ratio``.
        ConfigError: when the latency target's device does not exist on this machine.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch],
        example_inputs: torch.Tensor,
        config: EnvConfig | None = None,
        *,
        test_loader: Iterable[Batch] | None = None,
        selection_loader: Iterable[Batch] | None = None,
        graph: ModelGraph | None = None,
        cost_model: CostModel | None = None,
        progress: bool = True,
        calibration: Calibration | None = None,
    ) -> None:
        self.config = config if config is not None else EnvConfig()
        self.model = model
        self.graph = graph if graph is not None else build_graph(model, example_inputs)
        self.target = Target(self.config.target_metric, self.config.target_ratio)
        if cost_model is None:
            cost_model = create_cost_model(
                self.config.target_metric,
                self.graph,
                model,
                latency=self.config.latency,
                fewest=fewest_widths(
                    self.graph.groups, self.config.min_ratio, self.config.max_ratio, self.config.round_to
                ),
                progress=progress,
                granularity=self.config.granularity,
            )
        elif (
            cost_model.metric != self.config.target_metric
            or cost_model.graph.names != self.graph.names
            or getattr(cost_model, "granularity", "channel") != self.config.granularity
        ):
            raise ConfigError(
                f"the cost model passed measures {cost_model.metric!r} of a model with other groups; the env "
                f"budgets {self.config.target_metric!r} of its own"
            )
        self.cost_model: CostModel = cost_model
        if self.config.target_ms is not None:
            self.config = dataclasses.replace(self.config, target_ratio=self._ms_to_ratio(self.config.target_ms))
            self.target = Target(self.config.target_metric, self.config.target_ratio)
        try:
            self.wall = BudgetWall(
                self.graph.groups,
                self.cost_model,
                self.config.target_ratio,
                self.config.min_ratio,
                self.config.max_ratio,
                self.config.round_to,
            )
        except BudgetError:
            if self.config.target_ms is None:
                raise
            fewest = fewest_widths(
                self.graph.groups, self.config.min_ratio, self.config.max_ratio, self.config.round_to
            )
            raise BudgetError(
                f"target_ms {self.config.target_ms:g} is out of reach: with every group pruned at "
                f"max_ratio={self.config.max_ratio} the model is still estimated at "
                f"{self.cost_model.cost(fewest):.3f} ms (dense {self.cost_model.dense:.3f} ms, as measured with "
                "env.latency); raise target_ms or max_ratio"
            ) from None
        self.reward_fn: Reward = create_reward(self.config.reward, self.config.size_lambda)
        self.identity = ModelIdentity.of(model, tuple(example_inputs.shape[1:]), _num_classes(model, self.graph))
        self._walls: dict[float, BudgetWall] = {self.config.target_ratio: self.wall}
        if self.config.targets is not None:  # the tightest target must be reachable too
            self._wall_for(smallest(self.config.targets))
        self._embedding = LayerEmbedding(
            self.graph.groups, history=self.config.observe_history, target=self.config.targets is not None
        )
        self.observation_space = spaces.Box(0.0, 1.0, (self._embedding.size,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._calib, self._grad_batch = calibration if calibration is not None else self._draw_calibration(train_loader)
        self._fingerprint: str | None = None
        self._loaders: dict[str, Iterable[Batch] | None] = {
            "val": val_loader,
            "test": test_loader,
            "selection": selection_loader,
        }
        self._cached: dict[str, list[EvalBatch]] = {}
        self._step_index: int | None = None
        self._kept: dict[str, int] = {}
        self._ratios: dict[str, float] = {}
        self._last_model: nn.Module | None = None
        self._pruners: dict[str, ChannelPruner] = {}

    def _ms_to_ratio(self, target_ms: float) -> float:
        """The fraction of the dense model's estimated latency that ``target_ms`` milliseconds is."""
        dense = self.cost_model.dense
        if target_ms >= dense:
            raise ConfigError(
                f"target_ms {target_ms:g} is not below the dense model's latency on this machine "
                f"({dense:.3f} ms, as measured with env.latency); nothing needs pruning: lower target_ms"
            )
        return target_ms / dense

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: EnvConfig) -> Self:
        """Builds the model, data and traced groups named by ``config`` and the env on top of them."""
        return cls.from_workspace(build_workspace(config.model, config.data, config.checkpoint), config)

    @classmethod
    def from_workspace(
        cls,
        ws: Workspace,
        config: EnvConfig,
        cost_model: CostModel | None = None,
        progress: bool = True,
        calibration: Calibration | None = None,
    ) -> Self:
        """The env over an engine workspace (model, data, traced groups); used by parallel rollout workers.

        ``cost_model``: an already built cost model of ``ws.graph`` (None: built here, showing ``progress``).
        ``calibration``: another env's :attr:`calibration` (None: drawn from the training split). A split the
        workspace's data does not hold (None: a rollout worker's, see :func:`agents.parallel.worker_payload`) has
        no loader.
        """

        def loader(split: str, batch: int, **kwargs: Any) -> Any:
            return ws.data.loader(split, batch, **kwargs) if getattr(ws.data, split) is not None else None

        train = (
            None if calibration is not None else loader("train", config.bn_batch_size, shuffle=True, seed=config.seed)
        )
        env = cls(
            ws.model,
            train,
            loader("val", config.eval_batch_size),
            ws.example_inputs(),
            config,
            test_loader=loader("test", config.eval_batch_size),
            selection_loader=loader("selection", config.eval_batch_size),
            graph=ws.graph,
            cost_model=cost_model,
            progress=progress,
            calibration=calibration,
        )
        env.identity = ws.identity
        return env

    @property
    def calibration(self) -> Calibration:
        """The fixed BatchNorm calibration inputs and the batch of gradient-based criteria (None without one)."""
        return list(self._calib), self._grad_batch

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels ``split`` is evaluated on, in order (``eval_batches`` applied), as two tensors."""
        return real_images(self._cached_batches(split))

    def _draw_calibration(self, train_loader: Iterable[Batch]) -> Calibration:
        """The fixed BatchNorm calibration inputs, and a batch for gradient-based criteria."""
        return draw_calibration(train_loader, self.config.bn_batches, CRITERIA.get(self.config.criterion).needs_batch)

    # ------------------------------------------------------------------ what a search loop needs
    @property
    def group_names(self) -> list[str]:
        """Names of the prunable groups, in episode order."""
        return self.graph.names

    @property
    def dense_cost(self) -> Cost:
        """Exact FLOPs (per image) and params of the dense model."""
        return self.graph.dense_cost

    def has_split(self, split: str) -> bool:
        """Whether the env can evaluate on ``split`` (``val``, ``test`` or ``selection``)."""
        return self._loaders.get(split) is not None

    def split_size(self, split: str) -> int:
        """Images in ``split`` (counted through its loader)."""
        loader = self._loader(split)
        dataset = getattr(loader, "dataset", None)
        return len(dataset) if dataset is not None else sum(len(y) for _, y in loader)

    def evaluate_ratios(self, ratios: Mapping[str, float], split: str = "val") -> dict[str, float]:
        """Prunes the dense model with ``ratios`` (no action wall), recalibrates and evaluates it.

        The same code the episodes use, for baselines and for the final test-split evaluation.

        Args:
            ratios: Pruning ratio per group name (missing groups stay dense).
            split: ``val`` (search-val) or ``test``.

        Returns:
            ``top1``, ``flops``, ``params``, ``flops_ratio``, ``params_ratio``, ``cost_ratio`` and
            ``meets_target`` (1.0 or 0.0).
        """
        widths = self.widths(ratios)
        outcome = self._evaluate_widths(widths, split, "ratios").outcome
        return {**_outcome_dict(outcome), "meets_target": float(self.wall.meets(widths))}

    def evaluation(self, ratios: Mapping[str, float], split: str = "val") -> Evaluation:
        """Like :meth:`evaluate_ratios`, but returns the pruned, recalibrated model (yours to keep) with its outcome."""
        evaluation = self._evaluate_widths(self.widths(ratios), split, "ratios")
        return Evaluation(copy.deepcopy(evaluation.model), evaluation.outcome)

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """The kept channels per group of per-group pruning ``ratios`` (missing groups stay dense)."""
        unknown = sorted(set(ratios) - set(self.group_names))
        if unknown:
            raise ConfigError(f"no prunable groups named {', '.join(unknown)}; groups: {', '.join(self.group_names)}")
        return widths_for(self.graph, ratios, self.config.round_to)

    @property
    def last_model(self) -> nn.Module | None:
        """The pruned model of the last finished episode (``None`` before one); read-only.

        The next episode prunes into the same model object (see :class:`amc.pruning.ChannelPruner`):
        ``copy.deepcopy`` it to keep it. The last step's ``info`` carries everything else about the
        episode (``ratios``, ``top1``, costs).
        """
        return self._last_model

    def latency_reports(
        self, policies: Sequence[Mapping[str, float]], rounds: int = 3
    ) -> tuple[list[dict[str, float]], dict[str, float]]:
        """Estimated and measured latency of the models pruned by each of ``policies``, and the dense model's.

        Every policy is applied physically; each round measures every pruned model, then the dense one,
        with the table's settings, and each figure is the median over ``rounds`` (so the dense model and
        the policies see the same machine load).

        Returns:
            Per policy ``latency_ms_estimated`` and ``latency_ms_measured``, and the same as ratios to the dense
            model's (``latency_ratio_estimated`` / ``latency_ratio_measured``); and ``dense_latency_ms_estimated``
            and ``dense_latency_ms_measured``.

        Raises:
            ConfigError: when the env does not budget latency.
        """
        if not isinstance(self.cost_model, LatencyCost):
            raise ConfigError(f"latency_reports needs a latency target; this env budgets {self.config.target_metric}")
        widths = [widths_for(self.graph, ratios, self.config.round_to) for ratios in policies]
        with single_threaded():
            pruned = [
                prune_channels(self.model, self.graph, w, self.config.criterion, self._grad_batch).model for w in widths
            ]
        measured, dense_ms = self.cost_model.measure_many(self.model, pruned, rounds)
        reports = [
            {
                "latency_ms_estimated": self.cost_model.cost(w),
                "latency_ms_measured": ms,
                "latency_ratio_estimated": self.cost_model.ratio(w),
                "latency_ratio_measured": ms / dense_ms,
            }
            for w, ms in zip(widths, measured)
        ]
        return reports, {"dense_latency_ms_estimated": self.cost_model.dense, "dense_latency_ms_measured": dense_ms}

    def uniform_ratios(self, target: float | None = None) -> dict[str, float]:
        """The smallest ratio, the same for every group, that meets the target (the uniform baseline).

        Args:
            target: One of ``config.targets`` (None: the current episode's target).
        """
        wall = self.wall if target is None else self._wall_for(target)

        def meets(ratio: float) -> bool:
            return wall.meets(widths_for(self.graph, dict.fromkeys(self.group_names, ratio), self.config.round_to))

        # max_ratio meets the target (the wall checked it at construction)
        ratio = smallest_ratio(meets, self.config.min_ratio, self.config.max_ratio)
        return dict.fromkeys(self.group_names, ratio)

    def fit_ratios(self, ratios: Mapping[str, float], target: float | None = None) -> dict[str, float]:
        """``ratios`` at another budget: every group's action moved by one shift, the smallest that meets the target.

        The policy keeps its shape (which groups it prunes more than others) and uses the budget: a policy over
        the target is pruned more everywhere, one under it less. ``uniform_ratios`` is the special case of a
        policy with one ratio in every group.

        Args:
            ratios: Pruning ratio per group (missing groups: 0).
            target: One of ``config.targets`` (None: the current episode's target).
        """
        wall = self.wall if target is None else self._wall_for(target)
        names = self.group_names
        actions = np.array([self.ratio_to_action(ratios.get(n, 0.0)) for n in names])

        def shifted(shift: float) -> dict[str, float]:
            return {n: self._action_to_ratio(a) for n, a in zip(names, np.clip(actions + shift, -1.0, 1.0))}

        # a shift of 2 puts every group at max_ratio, which meets the target (the wall checked it at construction)
        return shifted(smallest_ratio(lambda s: wall.meets(self.widths(shifted(s))), -2.0, 2.0))

    def to_policy(
        self, ratios: Mapping[str, float], measured: Mapping[str, float] | None = None, target: float | None = None
    ) -> Policy:
        """A policy file object for ``ratios`` (for export and :func:`amc.apply_policy`), budgeted ``target``
        (None: the current episode's target)."""
        budget = self.target if target is None else Target(self.config.target_metric, target)
        if self.config.sparse:  # the sparsity the widths stand for: what sparsify applies and the search counted
            ratios = sparsity_ratios(self.graph, self.widths(ratios))
        return Policy(
            self.identity,
            dict(ratios),
            self.config.granularity,
            self.config.criterion,
            self.config.round_to,
            budget,
            dict(measured or {}),
        )

    def fingerprint(self) -> str:
        """A digest of what an episode's top-1 depends on besides its widths (:func:`envs.evaluation.evaluation_fingerprint`).

        Two envs with the same fingerprint measure the same search-val top-1 for the same widths, so the episodes
        of one search can stand in for episodes of the other (a warm start, :mod:`agents.warm_start`).
        """
        if self._fingerprint is None:
            c = self.config
            settings = {
                k: getattr(c, k)
                for k in ("criterion", "round_to", "seed", "reconstruct", "reconstruct_batches", "eval_batches")
            }
            if c.sparse:
                settings["granularity"] = c.granularity
            tensors = list(self._calib) + (list(self._grad_batch) if self._grad_batch is not None else [])
            self._fingerprint = evaluation_fingerprint(self.model, tensors, self._cached_batches("val"), settings)
        return self._fingerprint

    def score_model(self, model: nn.Module, split: str = "val") -> float:
        """Re-estimates ``model``'s BatchNorm statistics on the fixed batches (in place) and returns its top-1."""
        if self._calib:
            recalibrate_bn_seeded(model, self._calib, self.config.seed)
        if self.config.cache_eval:
            return top1(model, self._cached_batches(split))
        return evaluate(model, self._loader(split), max_batches=self.config.eval_batches or None)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Starts an episode at the first group; returns its observation and ``{"group": name}``."""
        super().reset(seed=seed)
        self._start_target((options or {}).get("target"))
        self._step_index = 0
        self._kept = {}
        self._ratios = {}
        info = {"group": self.group_names[0], "target": self.target.ratio}
        return self._embedding.observation(0, 0.0, 0.0, None, self.target.ratio), info

    def _start_target(self, target: float | None) -> None:
        """Sets the episode's target: ``target`` (one of ``config.targets``), else drawn from ``np_random``."""
        targets = self.config.targets
        if targets is None:
            if target is not None and target != self.config.target_ratio:
                raise ConfigError(
                    f"reset(options={{'target': {target}}}) needs env.targets listing it; this env budgets "
                    f"{self.config.target_ratio} only"
                )
            return
        if target is None:
            if isinstance(targets, TargetRange):
                target = float(self.np_random.uniform(targets.low, targets.high))
            else:
                target = float(targets[int(self.np_random.integers(len(targets)))])
        if not contains(targets, float(target)):
            raise ConfigError(f"target {target} is not one of env.targets {targets}")
        self.wall = self._wall_for(float(target))
        self.target = Target(self.config.target_metric, float(target))

    def _wall_for(self, target: float) -> BudgetWall:
        """The budget wall of ``target`` (built once, sharing the options of the first)."""
        if target not in self._walls:
            self._walls[target] = self.wall.with_target(target)
        return self._walls[target]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decides the current group's ratio; evaluates and pays the reward after the last group."""
        if self._step_index is None or self._step_index >= len(self.group_names):
            raise ResetNeeded("call reset() before step(): the episode has not started or has ended")
        index = self._step_index
        group = self.graph.groups[index]
        choice = self._decide(self._kept, index, action)
        self._ratios[group.name] = choice.ratio
        self._step_index = index + 1
        info: dict[str, Any] = {
            "group": group.name,
            "kept": choice.kept,
            "ratio": choice.ratio,
            "walled": choice.walled,
            "applied_action": self.ratio_to_action(choice.ratio),
            "target": self.target.ratio,
        }
        terminated = self._step_index == len(self.group_names)
        reward = self._finish(info) if terminated else 0.0
        observation = self._observation_after(self._kept, index, choice.ratio, self.target.ratio)
        return observation, reward, terminated, False, info

    def walk(
        self, policy: Callable[[int, np.ndarray], np.ndarray], count: int, target: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Plays ``count`` episodes up to their last decision, without pruning or evaluating anything.

        The observations and the budget wall depend only on the kept channel counts, so an agent can see where
        a policy would lead (the observations it would meet, the actions the wall would let through) at the
        cost of the wall's arithmetic, done for all episodes side by side on arrays; :meth:`step` with the same actions
        gives the same observations, bit for bit.

        Args:
            policy: ``policy(index, observations)`` gets the ``(count, features)`` observations of group
                ``index`` and returns the ``count`` actions for it.
            count: Episodes walked side by side.
            target: The episodes' target, one of ``config.targets`` (None: the current episode's target).

        Returns:
            The observations, ``(count, groups + 1, features)`` float32 (the one after the last step included),
            and the actions the wall applied, ``(count, groups)`` float32.
        """
        n = len(self.group_names)
        observations = np.zeros((count, n + 1, self._embedding.size), dtype=np.float32)
        applied = np.zeros((count, n), dtype=np.float32)
        # each episode's kept channels: dense until decided (the widths the observations describe)
        kept = np.tile(np.array([g.channels for g in self.graph.groups], dtype=np.int64), (count, 1))
        if target is None:
            target = self.target.ratio
        elif self.config.targets is None or not contains(self.config.targets, target):
            raise ConfigError(f"walk(target={target}): not one of env.targets {self.config.targets}")
        wall = self._wall_for(target)
        observations[:, 0] = self._embedding.observation(0, 0.0, 0.0, None, target)
        for index in range(n):
            actions = np.asarray(policy(index, observations[:, index].copy()), dtype=np.float64).reshape(count)
            choices = wall.choose_many(kept[:, :index], index, self._actions_to_ratios(actions))
            kept[:, index] = choices.kept
            applied[:, index] = self._ratios_to_actions(choices.ratio)
            observations[:, index + 1] = self._observations_after(kept, index, choices.ratio, target)
        return observations, applied

    def _decide(
        self, kept: dict[str, int], index: int, action: np.ndarray | float, wall: BudgetWall | None = None
    ) -> Choice:
        """The wall's decision for group ``index`` given the ``kept`` counts so far; records it in ``kept``."""
        choice = (wall or self.wall).choose(kept, index, self._action_to_ratio(action))
        kept[self.graph.groups[index].name] = choice.kept
        return choice

    def _observation_after(self, kept: Mapping[str, int], index: int, ratio: float, target: float) -> np.ndarray:
        """The observation once group ``index`` was decided with ``ratio`` (the last group's at the end)."""
        following = min(index + 1, len(self.group_names) - 1)
        return self._embedding.observation(following, self._reduced(kept), ratio, kept, target)

    def _observations_after(self, widths: np.ndarray, index: int, ratios: np.ndarray, target: float) -> np.ndarray:
        """:meth:`_observation_after` of many episodes: ``widths`` holds their ``(rows, groups)`` kept channels, the
        groups after ``index`` dense."""
        following = min(index + 1, len(self.group_names) - 1)
        reduced = 1.0 - self.graph.estimate_many(widths)[0].astype(np.float64) / self.graph.dense_cost.flops
        return self._embedding.observations(following, reduced, ratios, widths, target)

    # ------------------------------------------------------------------ internals
    def _finish(self, info: dict[str, Any]) -> float:
        """Evaluates the episode's widths, fills the last step's ``info`` and returns the reward."""
        evaluation = self._evaluate_widths(dict(self._kept), "val", "episode")
        reward = self.reward_fn(evaluation.outcome)
        info.update(_outcome_dict(evaluation.outcome))
        if self.cost_model.metric == "latency":
            info["latency_ratio"] = evaluation.outcome.cost_ratio
            info["latency_ms"] = evaluation.outcome.cost_ratio * self.cost_model.dense
        info["ratios"] = dict(self._ratios)
        self._last_model = evaluation.model
        return reward

    def _pruner(self, role: str) -> ChannelPruner:
        """The pruner of ``role``: ``episode`` (its model is :attr:`last_model`) or ``ratios``; built on first use."""
        if role not in self._pruners:
            with single_threaded():
                self._pruners[role] = ChannelPruner(self.model, self.graph, self.config.criterion, self._grad_batch)
        return self._pruners[role]

    def _evaluate_widths(self, widths: Mapping[str, int], split: str, role: str) -> Evaluation:
        """Prunes the dense model to ``widths``, reconstructs (if on), recalibrates, evaluates, counts costs.

        The model is the working copy of the ``role`` pruner, reused by its next call.
        """
        if self.config.sparse:
            with single_threaded():
                sparse = sparsify(self.model, self.graph, sparsity_ratios(self.graph, widths), self.config.granularity)
            return Evaluation(sparse, self.outcome(widths, self.score_model(sparse, split)))
        pruner = self._pruner(role)
        with single_threaded():
            result = pruner.prune(widths)
        pruned = result.model
        if self.config.reconstruct:
            # before BatchNorm re-estimation: the targets are the dense layers' outputs, which the dense
            # statistics fit (re-estimating first was measured worse: 79-81% vs 98% at 20% FLOPs)
            batches = self._calib[: self.config.reconstruct_batches]
            reconstruct(self.model, pruned, result.kept, batches, seed=self.config.seed)
        return Evaluation(pruned, self.outcome(widths, self.score_model(pruned, split)))

    def outcome(self, widths: Mapping[str, int], accuracy: float) -> Outcome:
        """What the reward sees of a model pruned to ``widths`` that scored ``accuracy``: exact costs and ratios
        (for a sparsity search: the non-zero parameters, and the dense FLOPs, which zeroed weights do not lower)."""
        dense = self.graph.dense_cost
        if self.config.sparse:
            cost = Cost(dense.flops, int(self.cost_model.cost(widths)))
        else:
            cost = self.graph.estimate(widths)
        return Outcome(
            top1=float(accuracy),
            flops=int(cost.flops),
            params=int(cost.params),
            flops_ratio=cost.flops / dense.flops,
            params_ratio=cost.params / dense.params,
            cost_ratio=self.cost_model.ratio(widths),
            target_ratio=self.target.ratio,
        )

    def _loader(self, split: str) -> Iterable[Batch]:
        if split not in self._loaders:
            raise ConfigError(f"unknown evaluation split {split!r}; use val, test or selection")
        loader = self._loaders[split]
        if loader is None:
            raise ConfigError(f"no {split} loader: pass {split}_loader= when building the env from your own model")
        return loader

    def _cached_batches(self, split: str) -> list[EvalBatch]:
        if split not in self._cached:
            size, limit = self.config.eval_batch_size, self.config.eval_batches or None
            self._cached[split] = fixed_size_batches(self._loader(split), size, limit)
        return self._cached[split]

    def _action_to_ratio(self, action: np.ndarray | float) -> float:
        values = np.asarray(action, dtype=np.float64).reshape(-1)
        if values.size != 1 or not np.isfinite(values[0]):
            raise InvalidActionError(f"an action is one finite number in [-1, 1], got {action!r}")
        a = float(np.clip(values[0], -1.0, 1.0))
        low, high = self.config.min_ratio, self.config.max_ratio
        return min(max(low + (a + 1.0) / 2.0 * (high - low), low), high)

    def _actions_to_ratios(self, actions: np.ndarray) -> np.ndarray:
        """:meth:`_action_to_ratio` of each of ``(rows,)`` float64 actions, with the same arithmetic."""
        finite = np.isfinite(actions)
        if not finite.all():
            raise InvalidActionError(f"an action is one finite number in [-1, 1], got {actions[~finite][0]!r}")
        low, high = self.config.min_ratio, self.config.max_ratio
        return np.minimum(np.maximum(low + (np.clip(actions, -1.0, 1.0) + 1.0) / 2.0 * (high - low), low), high)

    def _ratios_to_actions(self, ratios: np.ndarray) -> np.ndarray:
        """:meth:`ratio_to_action` of each of ``(rows,)`` float64 ratios, with the same arithmetic."""
        low, high = self.config.min_ratio, self.config.max_ratio
        if high == low:
            return np.zeros_like(ratios)
        return np.clip(2.0 * (ratios - low) / (high - low) - 1.0, -1.0, 1.0)

    def ratio_to_action(self, ratio: float) -> float:
        """The action in [-1, 1] that maps to ``ratio`` (inverse of the action mapping)."""
        low, high = self.config.min_ratio, self.config.max_ratio
        if high == low:
            return 0.0
        return float(np.clip(2.0 * (ratio - low) / (high - low) - 1.0, -1.0, 1.0))

    def _reduced(self, kept: Mapping[str, int]) -> float:
        """Fraction of the dense FLOPs removed by the groups decided in ``kept`` (the others dense)."""
        return 1.0 - self.graph.estimate(kept).flops / self.graph.dense_cost.flops


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Runs the block with one torch intra-op thread (restored afterwards).

    Pruning is thousands of tiny tensor ops (deepcopy, tracing, slicing) that intra-op threads do not
    speed up; on a busy machine their synchronisation made ResNet-20 pruning take ~1 s instead of ~20 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _outcome_dict(outcome: Outcome) -> dict[str, float]:
    return {
        "top1": outcome.top1,
        "flops": outcome.flops,
        "params": outcome.params,
        "flops_ratio": outcome.flops_ratio,
        "params_ratio": outcome.params_ratio,
        "cost_ratio": outcome.cost_ratio,
    }


def _num_classes(model: nn.Module, graph: ModelGraph) -> int:
    classifier = model.get_submodule(graph.classifier)
    return int(getattr(classifier, "out_features", getattr(classifier, "out_channels", 0)))


def make_env(config: EnvConfig | None = None, **overrides: Any) -> ChannelPruningEnv:
    """Entry point of ``amc/ChannelPruning-v0``: ``EnvConfig`` (default: ``EnvConfig()``) with ``overrides``."""
    base = config if config is not None else EnvConfig()
    return ChannelPruningEnv.from_config(base.replace(**overrides) if overrides else base)
