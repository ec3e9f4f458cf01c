"""AMC's DDPG search agent, built on stable-baselines3's :class:`~stable_baselines3.DDPG`.

The networks (actor, critic and their targets), the Adam optimizers, the Polyak update and the
replay buffer are SB3's. SB3's ``learn()`` loop is never used: AMC needs a different episode-level
protocol, which :class:`AMCDDPG` adds on top (following mit-han-lab/amc ``lib/agent.py`` and the
``train()`` loop of ``amc_search.py``):

* separate actor / critic learning rates (SB3 has one ``learning_rate`` for both);
* ``warmup_episodes`` episodes of uniform random actions, without gradient steps;
* truncated-normal exploration around the actor's action, truncated to the action bounds, whose
  sigma decays multiplicatively once per episode after warm-up;
* credit assignment: the reward only arrives at the end of an episode, so every transition of an
  episode is stored with the episode's final reward, and the critic regresses onto
  ``reward - baseline`` where the baseline is an exponential moving average of sampled batch means;
* ``updates_per_transition`` gradient steps per stored transition at each episode end (or
  ``updates_per_episode`` per episode).

Randomness: network initialisation uses the torch RNG seeded from ``seed`` inside
``torch.random.fork_rng`` (the global torch RNG is left untouched); actions and replay sampling
use the agent's own ``numpy.random.Generator``. Same seed, same calls -> same actions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import ContinuousCritic
from torch import nn

from amc.errors import ConfigError

__all__ = ["AMCDDPG", "AMC_STYLE", "DDPGConfig", "warmup_actions"]

WARMUP_DESIGNS = ("uniform", "lhs")
VALUE_STEPS = ("mean", "last")
AMC_STYLE = {
    "warmup_design": "uniform",
    "critics": 1,
    "proposals": 1,
    "elites": 0,
    "optimism": 0.0,
    "value_steps": "mean",
}
"""DDPGConfig fields that turn the space-filling warm-up, the critic ensemble and the proposals off: AMC's agent."""

_MODEL_FILE = "model.zip"
_BUFFER_FILE = "replay_buffer.pkl"
_STATE_FILE = "agent_state.json"
_STATE_FORMAT = 2  # 2: seeded replay buffer class, own update counter


@dataclass(frozen=True)
class DDPGConfig:
    """Hyper-parameters of the AMC DDPG agent.

    The networks, tau, batch size and the update schedule are AMC's (``amc_search.py`` arguments). The
    exploration schedule, learning rates, replay size and baseline rate were measured on the embedded
    default (digits ResNet-20, 20% FLOPs, 300 episodes, 2 dense seeds; ``experiments/bench/search_quality.py``
    and ``docs/results/search-quality.md``): AMC's own values (sigma 1.0 in our action units, decay 0.95 per episode, actor lr 1e-4,
    100 warm-up episodes, baseline rate 0.5) stop exploring within ~60 episodes and reached 79.4 / 81.4%
    test top-1 where sigma 0.5, decay 0.995, lr 1e-3, 50 warm-up episodes reached 84.1 / 86.9%.

    The defaults then add what makes the agent sample-efficient (measured against Optuna's TPE on best-so-far
    search-val top-1 after 100 episodes, 3 dense seeds, both digits models at 20% and 50% FLOPs;
    ``docs/results/search-quality.md``): 10 warm-up episodes from a Latin hypercube instead of 50 uniform ones, 5 critics, and
    64 proposals per episode, half of them perturbing the 5 best episodes so far, walked through the budget
    wall and ranked by the critics (mean + 1 x spread) before one is played, with sigma 0.3. With the env's
    history in the observation (``env.observe_history``) the proposals are ranked by the critics' value of
    their last step (``value_steps: last``), which sees the whole policy; with that better judge, 64 proposals
    measured at least as well as 32 (the default before the history).

    Attributes:
        hidden: Hidden layer widths of both the actor and the critic (AMC ``--hidden1/--hidden2``
            300, 300). (128, 128) learns at about half the cost per episode, which matters with many workers on a
            model whose episodes are short; its best-so-far search-val top-1 tied on ResNet-20 and was ~3 points
            lower on MobileNetV2 at 20% FLOPs (300 episodes, lower in 5 of 6 searches), and (64, 64) lost ~5 points
            (``experiments/bench/results/learner_hidden_quality*.json``).
        actor_lr: Adam learning rate of the actor (AMC ``--lr_a``: 1e-4).
        critic_lr: Adam learning rate of the critic (AMC ``--lr_c``: 1e-3).
        warmup_episodes: Episodes of random actions (see ``warmup_design``) before the actor acts and learns
            (AMC ``--warmup``: 100).
        noise_sigma: Initial sigma of the truncated-normal exploration noise, in the action space
            [-1, 1] (AMC ``--init_delta`` 0.5 on preserve ratios in [0, 1], i.e. 1.0 in these units).
        noise_decay: Factor applied to sigma after every episode past warm-up (AMC ``--delta_decay``:
            0.95). 0.995 leaves sigma at 0.14 after 250 learning episodes, so the search keeps exploring
            around the actor until the end.
        tau: Polyak coefficient of the target networks (AMC ``--tau`` 0.01).
        batch_size: Transitions per gradient step (AMC ``--bsize`` 64).
        buffer_size: Replay buffer capacity in transitions (AMC ``--rmsize``: 100 episodes); 12000 keeps
            every episode of a 300-episode search of a model with up to 40 groups.
        gamma: Discount of the bootstrapped target. Only used when ``bootstrap`` is true (AMC's code
            bootstraps with ``--discount`` 1).
        bootstrap: When false (the default), the critic regresses directly onto ``reward - baseline``
            (the relabelled reward already is the Monte-Carlo return). When true, the target is
            ``reward - baseline + gamma * (1 - done) * Q'(s', pi'(s'))`` as in AMC's code (measured no better).
        baseline_alpha: Rate of the moving-average reward baseline, updated on each sampled
            batch's mean reward: ``b += alpha * (mean - b)`` (AMC ``moving_alpha``: 0.5).
        updates_per_transition: Gradient steps per transition of a finished episode (AMC runs one
            ``update_policy()`` per stored transition; 3 measured no better).
        updates_per_episode: Gradient steps per finished learning episode, whatever its length, instead of
            ``updates_per_transition`` per transition (0, the default: AMC's schedule). The learner's time per
            episode bounds the episodes per second of a search with many workers; it grows with the steps times
            ``batch_size`` (on ResNet-20, one CPU thread: 12 steps of 64 ~110 ms, 1 step of 768 ~63 ms, 1 of 64
            ~9 ms against a ~230 ms episode; ``experiments/bench/ray_scaling.py --learner-only``). 1 or 2 steps of
            64 measured ~5 points lower best search-val top-1 after 100 episodes (``docs/results/scaling.md``).
        warmup_design: How warm-up episodes choose their actions: ``uniform`` (AMC: independent uniform
            actions) or ``lhs`` (a Latin hypercube over the groups' actions, one row per warm-up episode:
            every group's actions spread evenly over [-1, 1] across the warm-up).
        critics: Critic networks (SB3's ``n_critics``; AMC: 1). Each regresses onto the same target from its
            own initialisation; the actor ascends their mean, and their spread measures the critic's doubt.
        proposals: Candidate episodes per learning episode (1: AMC, play the actor with noise). With more,
            the agent walks that many noisy actor episodes through the budget wall without evaluating them
            (:meth:`envs.ChannelPruningEnv.walk`) and plays the one the critics value most (see
            :mod:`agents.proposals`).
        optimism: Weight of the critics' spread in a proposal's value (mean + optimism x standard deviation
            over the critics); 0 ranks by the mean.
        elites: With several proposals, half of them perturb the actions of the best ``elites`` episodes so far
            (the replay buffer's best) instead of the actor's; 0: all follow the actor.
        value_steps: Which of a proposal's steps the critics value it by: ``last`` (their Q at the last step;
            with the env's ``observe_history`` that state and action are the whole policy, so the value is a
            model of the episode's reward) or ``mean`` (the mean over its steps, each Q an expectation over
            the later actions; what the agent did before the history joined the observation).
    """

    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    warmup_episodes: int = 10
    noise_sigma: float = 0.3
    noise_decay: float = 0.995
    tau: float = 0.01
    batch_size: int = 64
    buffer_size: int = 12000
    gamma: float = 1.0
    bootstrap: bool = False
    baseline_alpha: float = 0.05
    updates_per_transition: int = 1
    updates_per_episode: int = 0
    warmup_design: str = "lhs"
    critics: int = 5
    proposals: int = 64
    optimism: float = 1.0
    elites: int = 5
    value_steps: str = "last"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must be a non-empty list of positive layer widths, got {self.hidden!r}")
        _check_range("actor_lr", self.actor_lr, 0.0, math.inf, low_open=True)
        _check_range("critic_lr", self.critic_lr, 0.0, math.inf, low_open=True)
        _check_range("noise_sigma", self.noise_sigma, 0.0, math.inf)
        _check_range("noise_decay", self.noise_decay, 0.0, 1.0, low_open=True)
        _check_range("tau", self.tau, 0.0, 1.0, low_open=True)
        _check_range("gamma", self.gamma, 0.0, 1.0)
        _check_range("baseline_alpha", self.baseline_alpha, 0.0, 1.0, low_open=True)
        _check_int("warmup_episodes", self.warmup_episodes, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("buffer_size", self.buffer_size, 1)
        _check_int("updates_per_transition", self.updates_per_transition, 0)
        _check_int("updates_per_episode", self.updates_per_episode, 0)
        if not isinstance(self.bootstrap, bool):
            raise ConfigError(f"bootstrap must be true or false, got {self.bootstrap!r}")
        if self.warmup_design not in WARMUP_DESIGNS:
            raise ConfigError(f"warmup_design must be one of {', '.join(WARMUP_DESIGNS)}, got {self.warmup_design!r}")
        _check_int("critics", self.critics, 1)
        _check_int("proposals", self.proposals, 1)
        _check_range("optimism", self.optimism, 0.0, math.inf)
        _check_int("elites", self.elites, 0)
        if self.value_steps not in VALUE_STEPS:
            raise ConfigError(f"value_steps must be one of {', '.join(VALUE_STEPS)}, got {self.value_steps!r}")


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Raises a ConfigError unless ``low <= value <= high`` (``low < value`` when ``low_open``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = "(" if low_open else "["
        upper = "inf)" if math.isinf(high) else f"{high:g}]"
        raise ConfigError(f"{name} must be a number in {bound}{low:g}, {upper}, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raises a ConfigError unless ``value`` is an int of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


class SeededReplayBuffer(ReplayBuffer):
    """SB3's replay buffer, sampling from the agent's own numpy Generator.

    SB3's :meth:`ReplayBuffer.sample` draws indices from the global numpy RNG; AMC's agent must be
    reproducible without touching global state, so this subclass overrides ``sample`` (SB3's documented
    extension point: ``replay_buffer_class``) and keeps the storage, ``add`` and ``_get_samples`` as they are.
    The generator is not pickled with the buffer: the agent attaches its own after building or loading.
    """

    rng: np.random.Generator | None = None

    def sample(self, batch_size: int, env: Any = None) -> Any:
        if self.rng is None:
            raise RuntimeError("attach a numpy Generator (buffer.rng) before sampling")
        upper = self.buffer_size if self.full else self.pos
        return self._get_samples(self.rng.integers(0, upper, size=batch_size), env=env)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("rng", None)
        return state


def truncated_normal_action(mu: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """AMC's exploration: a normal sample around ``mu`` with ``sigma``, truncated to [-1, 1] (float32)."""
    if sigma <= 0.0:
        return np.clip(mu, -1.0, 1.0).astype(np.float32)
    low, high = (-1.0 - mu) / sigma, (1.0 - mu) / sigma
    sample = truncnorm.rvs(low, high, loc=mu, scale=sigma, size=np.shape(mu), random_state=rng)
    return np.clip(sample, -1.0, 1.0).astype(np.float32)


def ensemble_q(
    critic: ContinuousCritic, obs: torch.Tensor, actions: torch.Tensor, frozen: bool = False
) -> torch.Tensor:
    """Every critic's Q of ``(obs, actions)``: ``(critics, batch, 1)``, SB3's forward stacked.

    With ``frozen`` the critics' weights are constants: gradients flow to ``obs`` and ``actions`` only. The actor's
    step needs nothing else; SB3's forward also computes every critic weight's gradient there (a third of the
    ensemble's backward work), which the next critic step's ``zero_grad`` throws away. One batched product per
    layer over the stacked weights (``torch.bmm``) measured slower on CPU than one product per critic (forward and
    backward of the 300x300 layer at batch 64: ~5.3 vs ~3.8 ms for 5 critics): the weights are copied every call
    and the products are large enough that the dispatch saved is small.

    Args:
        critic: SB3's critic (its ``q_networks``: ``nn.Sequential`` MLPs).
        obs: ``(batch, features)`` observations.
        actions: ``(batch, action size)`` actions.
        frozen: Treat the critics' weights as constants.
    """
    with torch.no_grad():  # the critic's own features extractor: a flatten, nothing to learn
        features = critic.extract_features(obs, critic.features_extractor)
    x = torch.cat([features, actions], dim=1)
    if not frozen:
        return torch.stack(tuple(q_net(x) for q_net in critic.q_networks))
    values = []
    for q_net in critic.q_networks:
        h = x
        for layer in q_net:
            h = F.linear(h, layer.weight.detach(), layer.bias.detach()) if isinstance(layer, nn.Linear) else layer(h)
        values.append(h)
    return torch.stack(values)


def fused_polyak(params: Iterable[torch.Tensor], target_params: Iterable[torch.Tensor], tau: float) -> None:
    """SB3's ``polyak_update`` (``target = (1 - tau) * target + tau * param``, the same operations) in two calls."""
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"{len(params)} parameters for {len(target_params)} target parameters")
    with torch.no_grad():
        targets = [t.data for t in target_params]
        torch._foreach_mul_(targets, 1 - tau)
        torch._foreach_add_(targets, [p.data for p in params], alpha=tau)


def _check_spaces(observation_space: gymnasium.spaces.Space, action_space: gymnasium.spaces.Space) -> None:
    """Raises a ConfigError unless both spaces are Boxes and the actions span exactly [-1, 1]."""
    if not isinstance(observation_space, gymnasium.spaces.Box):
        raise ConfigError(f"the observation space must be a gymnasium Box, got {observation_space!r}")
    if not isinstance(action_space, gymnasium.spaces.Box):
        raise ConfigError(f"the action space must be a gymnasium Box, got {action_space!r}")
    if not (np.all(action_space.low == -1.0) and np.all(action_space.high == 1.0)):
        raise ConfigError(
            f"the action space must be Box(-1, 1), got {action_space!r}; "
            "map the [-1, 1] action to your range inside the environment"
        )


def _build_model(
    env: gymnasium.Env,
    config: DDPGConfig,
    seed: int,
    device: str,
) -> DDPG:
    """Builds SB3's DDPG with AMC's sizes; networks are seeded without touching global RNGs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DDPG(
            "MlpPolicy",
            env,  # SB3 reads its spaces; it never steps it (the search loop drives the episodes)
            replay_buffer_class=SeededReplayBuffer,
            learning_rate=config.critic_lr,  # the actor's lr is set afterwards, see _apply_learning_rates
            buffer_size=config.buffer_size,
            learning_starts=0,
            batch_size=config.batch_size,
            tau=config.tau,
            gamma=config.gamma,
            policy_kwargs={"net_arch": list(config.hidden), "n_critics": config.critics},
            seed=None,  # SB3 would reseed the global python / numpy / torch RNGs
            device=device,
        )
    return model


class AMCDDPG:
    """DDPG agent with AMC's warm-up, truncated-normal exploration and final-reward credit assignment.

    Drive it one episode at a time: call :meth:`act` for every step, then :meth:`end_episode` with
    the episode's observations, actions and final reward.

    Args:
        env: The environment (SB3 reads its spaces; the observations must be a Box and the actions exactly
            Box(-1, 1)). It is never reset or stepped by the agent.
        config: Hyper-parameters.
        seed: Seed of the network initialisation and of the agent's own numpy Generator.
        device: Torch device of the networks.

    Attributes:
        config: The hyper-parameters.
        seed: The seed given at construction.
        episode: Episodes completed so far.
        updates: Gradient steps taken so far.
    """

    def __init__(
        self, env: gymnasium.Env, config: DDPGConfig = DDPGConfig(), seed: int = 0, device: str = "cpu"
    ) -> None:
        _check_spaces(env.observation_space, env.action_space)
        self._setup(_build_model(env, config, seed, device), config, seed)

    def _setup(self, model: DDPG, config: DDPGConfig, seed: int) -> None:
        """Fresh counters, noise and RNG around an SB3 model (built or loaded)."""
        self.config = config
        self.seed = seed
        self.episode = 0
        self.updates = 0
        self._model = model
        self._apply_learning_rates()
        self._rng = np.random.default_rng(seed)
        self.replay_buffer.rng = self._rng  # the buffer samples with the agent's generator
        self._sigma = config.noise_sigma
        self._baseline: float | None = None

    # ----------------------------------------------------------------- state
    @property
    def sigma(self) -> float:
        """Current sigma of the exploration noise (the initial one until warm-up ends)."""
        return self._sigma

    @property
    def in_warmup(self) -> bool:
        """Whether the next episode is a warm-up episode (random actions, no learning)."""
        return self.episode < self.config.warmup_episodes

    @property
    def baseline(self) -> float | None:
        """Moving-average reward baseline; None before the first gradient step."""
        return self._baseline

    @property
    def model(self) -> DDPG:
        """The underlying SB3 DDPG model (networks, optimizers, replay buffer)."""
        return self._model

    @property
    def replay_buffer(self) -> SeededReplayBuffer:
        """SB3's replay buffer (the seeded subclass) holding the relabelled transitions."""
        buffer = self._model.replay_buffer
        if not isinstance(buffer, SeededReplayBuffer):
            raise ConfigError(
                f"the DDPG model holds a {type(buffer).__name__}, expected SeededReplayBuffer; "
                "the checkpoint was written by another version: start the search again"
            )
        return buffer

    def _apply_learning_rates(self) -> None:
        """Gives the actor and the critic optimizers their own learning rates, and Adam's fused kernel.

        SB3 builds both Adam optimizers with ``lr_schedule(1)``; it would overwrite them again in
        ``_update_learning_rate``, which only its own ``train()`` calls and this class never does. Loading an
        optimizer's state brings the saved options back, so this runs after every build, load and take-over.
        The fused Adam (one kernel per parameter instead of a dozen operations; torch's default on neither CPU
        nor older checkpoints) computes the same update up to float rounding, ~3x faster on CPU.
        """
        for optimizer, lr in (
            (self._model.actor.optimizer, self.config.actor_lr),
            (self._model.critic.optimizer, self.config.critic_lr),
        ):
            for group in optimizer.param_groups:
                group["lr"] = lr
                group["foreach"], group["fused"] = None, True

    # --------------------------------------------------------------- acting
    def _actor_output(self, obs: np.ndarray) -> np.ndarray:
        """Runs the actor on one observation; returns its action in [-1, 1] as float64."""
        batch = np.asarray(obs, dtype=np.float32).reshape((1, *self._model.observation_space.shape))
        return self._actor_batch(batch).reshape(self._model.action_space.shape)

    def _actor_batch(self, observations: np.ndarray) -> np.ndarray:
        """The actor's actions for ``(n, *observation shape)`` observations: ``(n, action size)`` float64."""
        tensor = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=self._model.device)
        self._model.policy.set_training_mode(False)
        with torch.no_grad():
            actions = self._model.actor(tensor)
        return actions.cpu().numpy().reshape(len(tensor), -1).astype(np.float64)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Exploration action for one observation.

        During warm-up the action is uniform in [-1, 1]; afterwards it is drawn from a normal
        distribution centred on the actor's action with the current sigma, truncated to [-1, 1].

        Args:
            obs: One observation.

        Returns:
            The action, float32, shaped like the action space.
        """
        shape = self._model.action_space.shape
        if self.in_warmup:
            return self._rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        return truncated_normal_action(self._actor_output(obs), self._sigma, self._rng)

    def act_deterministic(self, obs: np.ndarray) -> np.ndarray:
        """The actor's action for one observation, without noise (float32, action-space shape)."""
        return np.clip(self._actor_output(obs), -1.0, 1.0).astype(np.float32)

    def actor_actions(self, observations: np.ndarray) -> np.ndarray:
        """The actor's actions for a batch of observations ``(n, features)``: ``(n,)`` float64 in [-1, 1]."""
        return np.clip(self._actor_batch(observations)[:, 0], -1.0, 1.0)

    def q_values(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Every critic's value of ``(observation, action)`` pairs, in reward units (the baseline added back).

        Args:
            observations: ``(n, features)``.
            actions: ``(n,)`` or ``(n, 1)`` actions in [-1, 1].

        Returns:
            ``(critics, n)`` float64: each critic's prediction of the episode's final reward.
        """
        obs = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=self._model.device)
        act = torch.as_tensor(np.asarray(actions, dtype=np.float32).reshape(len(obs), 1), device=self._model.device)
        self._model.policy.set_training_mode(False)
        with torch.no_grad():
            values = ensemble_q(self._model.critic, obs, act)[:, :, 0]
        return values.cpu().numpy().astype(np.float64) + (self._baseline or 0.0)

    def elites(self, count: int, length: int, target: float | None = None, band: float = 0.0) -> np.ndarray:
        """The actions of the ``count`` best-rewarded episodes in the replay buffer, best first.

        Args:
            count: Episodes wanted (fewer come back while the buffer holds fewer).
            length: Transitions per episode (every episode of a channel-pruning search has one per group).
            target: With several targets in one search (the observation's last feature), only episodes whose
                target is within ``band`` of this one (None: every episode).
            band: See ``target``.

        Returns:
            ``(k, length)`` float64 actions, ``k <= count``.
        """
        buffer = self.replay_buffer
        upper = buffer.buffer_size if buffer.full else buffer.pos
        ends = np.flatnonzero(buffer.dones[:upper, 0] > 0.5)
        starts = ends - length + 1
        whole = starts >= 0
        if buffer.full:  # an episode across the write position mixes old and new transitions
            whole &= ~((starts < buffer.pos) & (ends >= buffer.pos))
        ends, starts = ends[whole], starts[whole]
        if target is not None:
            near = np.abs(buffer.observations[starts, 0, -1] - target) <= band + 1e-6
            ends, starts = ends[near], starts[near]
        order = np.argsort(-buffer.rewards[ends, 0], kind="stable")[:count]
        return np.array([buffer.actions[starts[i] : ends[i] + 1, 0, 0] for i in order], dtype=np.float64).reshape(
            len(order), length
        )

    # ------------------------------------------------------------- learning
    def store_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> int:
        """Stores an episode in the replay buffer, every transition relabelled with the final reward.

        Transition ``i`` is ``(observations[i], actions[i], final_reward, observations[i + 1], done)``
        with ``done`` true only for the last one. ``observations`` may hold the observation after
        the last step (``len(actions) + 1`` entries); if not, the last transition's next
        observation repeats its own, which only matters with ``bootstrap`` (and then ``done``
        masks it).

        Args:
            observations: The episode's observations, ``len(actions)`` or ``len(actions) + 1``.
            actions: The actions taken, in [-1, 1].
            final_reward: The reward received at the end of the episode.

        Returns:
            The number of transitions stored.

        Raises:
            ValueError: On an empty episode, mismatched lengths or a non-finite reward.
        """
        n = len(actions)
        if n == 0 or len(observations) not in (n, n + 1):
            raise ValueError(
                f"an episode needs >= 1 action and len(actions) or len(actions) + 1 observations, "
                f"got {n} actions and {len(observations)} observations"
            )
        if not math.isfinite(final_reward):
            raise ValueError(f"final_reward must be finite, got {final_reward!r}")
        buffer = self.replay_buffer
        obs_shape = (1, *self._model.observation_space.shape)
        dtype = self._model.observation_space.dtype
        next_observations = list(observations[1:]) + ([observations[-1]] if len(observations) == n else [])
        for i in range(n):
            buffer.add(
                np.asarray(observations[i], dtype=dtype).reshape(obs_shape),
                np.asarray(next_observations[i], dtype=dtype).reshape(obs_shape),
                np.asarray(actions[i], dtype=np.float32).reshape(1, -1),
                np.array([final_reward], dtype=np.float32),
                np.array([i == n - 1], dtype=np.float32),
                [{}],
            )
        return n

    def end_episode(
        self, observations: Sequence[np.ndarray], actions: Sequence[np.ndarray], final_reward: float
    ) -> dict[str, float]:
        """Finishes an episode: stores it, advances the counters and learns if past warm-up.

        Args:
            observations: The episode's observations (see :meth:`store_episode`).
            actions: The actions taken.
            final_reward: The reward received at the end of the episode.

        Returns:
            ``updates`` and ``sigma`` (the one for the next episode), plus the mean ``critic_loss``,
            ``actor_loss`` and the current ``baseline`` when gradient steps ran.
        """
        was_warmup = self.in_warmup
        n = self.store_episode(observations, actions, final_reward)
        self.episode += 1
        if was_warmup:
            return {"updates": 0.0, "sigma": self._sigma}
        self._sigma *= self.config.noise_decay
        stats = self._train(self.steps_per_episode(n))
        return {**stats, "sigma": self._sigma}

    def steps_per_episode(self, transitions: int) -> int:
        """Gradient steps after a learning episode of ``transitions`` transitions (see ``updates_per_episode``)."""
        cfg = self.config
        return cfg.updates_per_episode or transitions * cfg.updates_per_transition

    def _train(self, steps: int) -> dict[str, float]:
        """Runs ``steps`` gradient steps; returns the mean losses and the baseline."""
        if steps == 0:
            return {"updates": 0.0}
        self._model.policy.set_training_mode(True)
        losses = torch.stack([torch.stack(self._gradient_step()) for _ in range(steps)])
        self._model.policy.set_training_mode(False)
        self.updates += steps
        critic_loss, actor_loss = losses.double().mean(dim=0).tolist()  # one read of the losses per episode
        return {
            "updates": float(steps),
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "baseline": float(self._baseline if self._baseline is not None else math.nan),
        }

    def _batch_and_target(
        self, target_q: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> tuple[Any, torch.Tensor]:
        """A replay batch and the critics' regression target: the reward less the moving baseline (updated with the
        batch's mean), plus with ``bootstrap`` the discounted value ``target_q(next_obs, target actor's action)``
        of the first target critic."""
        cfg = self.config
        data = self.replay_buffer.sample(cfg.batch_size)
        batch_mean = float(data.rewards.mean())
        if self._baseline is None:
            self._baseline = batch_mean
        else:
            self._baseline += cfg.baseline_alpha * (batch_mean - self._baseline)
        target = data.rewards - self._baseline
        if cfg.bootstrap:
            with torch.no_grad():
                next_obs = data.next_observations
                next_q = target_q(next_obs, self._model.actor_target(next_obs))
                target = target + cfg.gamma * (1.0 - data.dones) * next_q
        return data, target

    def _gradient_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One AMC update: baseline, critic regression, actor ascent, Polyak update of the targets.

        The same update as SB3's modules compute it (:meth:`_sb3_gradient_step`, up to float rounding), cheaper:
        the actor's step treats the critics' weights as constants (:func:`ensemble_q`), Adam runs fused (see
        :meth:`_apply_learning_rates`) and each Polyak update is two calls over all parameters. Returns the critic
        and actor losses (detached tensors, read once per episode).
        """
        model, cfg = self._model, self.config
        data, target = self._batch_and_target(lambda obs, act: ensemble_q(model.critic_target, obs, act)[0])
        predictions = ensemble_q(model.critic, data.observations, data.actions)  # (critics, batch, 1)
        critic_loss = F.mse_loss(predictions, target.expand_as(predictions))
        _descend(model.critic.optimizer, critic_loss)
        actor_q = ensemble_q(model.critic, data.observations, model.actor(data.observations), frozen=True)
        actor_loss = -actor_q.mean()
        _descend(model.actor.optimizer, actor_loss)
        fused_polyak(model.critic.parameters(), model.critic_target.parameters(), cfg.tau)
        fused_polyak(model.actor.parameters(), model.actor_target.parameters(), cfg.tau)
        return critic_loss.detach(), actor_loss.detach()

    def _sb3_gradient_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_gradient_step` as SB3's modules compute it, one critic after the other.

        The critics' gradients of the actor's loss are computed (and dropped by the next step's ``zero_grad``),
        the targets follow SB3's ``polyak_update``. What the agent ran before the batched step: the reference that
        step is tested and benchmarked against (``experiments/bench/ray_scaling.py --learner-only``).
        """
        from stable_baselines3.common.utils import polyak_update

        model, cfg = self._model, self.config
        data, target = self._batch_and_target(lambda obs, act: model.critic_target(obs, act)[0])
        predictions = model.critic(data.observations, data.actions)
        critic_loss = sum(F.mse_loss(q, target) for q in predictions) / len(predictions)
        _descend(model.critic.optimizer, critic_loss)
        actor_q = model.critic(data.observations, model.actor(data.observations))
        actor_loss = -torch.stack(actor_q).mean()
        _descend(model.actor.optimizer, actor_loss)
        polyak_update(model.critic.parameters(), model.critic_target.parameters(), cfg.tau)
        polyak_update(model.actor.parameters(), model.actor_target.parameters(), cfg.tau)
        return critic_loss.detach(), actor_loss.detach()

    # ---------------------------------------------------------- warm start
    def take_over(self, other: AMCDDPG) -> None:
        """Starts from ``other``'s learning: its networks, optimizer states and reward baseline, and no warm-up.

        The replay buffer, counters, noise and random generator stay this agent's own (a warm start fills the
        replay with the other search's episodes relabelled to this one; see :mod:`agents.warm_start`).

        Raises:
            ConfigError: When the networks differ in shape (observation size, ``hidden`` or ``critics``).
        """
        mine, theirs = self._model.observation_space.shape, other.model.observation_space.shape
        if mine != theirs:
            raise ConfigError(
                f"the other agent observes {theirs[0]} features and this one {mine[0]}: a warm start needs the same "
                "model (its groups), env.observe_history alike, and one target or several in both searches"
            )
        shape = ("hidden", "critics")
        if any(getattr(self.config, k) != getattr(other.config, k) for k in shape):
            raise ConfigError(
                "the other agent's networks have "
                + ", ".join(f"ddpg.{k}={getattr(other.config, k)!r}" for k in shape)
                + " and this one's "
                + ", ".join(f"ddpg.{k}={getattr(self.config, k)!r}" for k in shape)
                + ": set this search's to the other's to start from it"
            )
        self._model.policy.load_state_dict(other.model.policy.state_dict())
        for name in ("actor", "critic"):
            optimizer = getattr(self._model, name).optimizer
            optimizer.load_state_dict(getattr(other.model, name).optimizer.state_dict())
        self._apply_learning_rates()  # the loaded state carries the other's rates
        self._baseline = other.baseline  # the critics predict rewards relative to it
        self.config = replace(self.config, warmup_episodes=0)

    # ------------------------------------------------------- actor shipping
    def get_actor_state(self) -> dict[str, torch.Tensor]:
        """Copy of the actor's weights (on CPU), e.g. to ship to rollout workers."""
        return {k: v.detach().cpu().clone() for k, v in self._model.actor.state_dict().items()}

    def set_actor_state(self, state: dict[str, torch.Tensor]) -> None:
        """Loads actor weights from :meth:`get_actor_state` (the target actor is left as is)."""
        self._model.actor.load_state_dict(state)

    # ---------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        """Saves everything needed to resume exactly.

        Writes SB3's model zip (networks and optimizer states), SB3's pickled replay buffer and a
        JSON file with the config, the episode counter, sigma, the baseline and the RNG state.

        Args:
            directory: Folder to write into; created if missing.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save(directory / _MODEL_FILE)
        self._model.save_replay_buffer(directory / _BUFFER_FILE)
        state = {
            "format": _STATE_FORMAT,
            "config": asdict(self.config),
            "seed": self.seed,
            "episode": self.episode,
            "updates": self.updates,
            "sigma": self._sigma,
            "baseline": self._baseline,
            "rng_state": self._rng.bit_generator.state,
        }
        (directory / _STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> AMCDDPG:
        """Loads an agent written by :meth:`save`; continuing it matches continuing the original.

        Args:
            directory: Folder written by :meth:`save`.
            device: Torch device of the networks.

        Returns:
            The restored agent.

        Raises:
            ConfigError: If the folder misses a file or holds another format.
        """
        directory = Path(directory)
        missing = [f for f in (_MODEL_FILE, _BUFFER_FILE, _STATE_FILE) if not (directory / f).is_file()]
        if missing:
            raise ConfigError(f"{directory} is not a saved DDPG agent: missing {', '.join(missing)}")
        state = json.loads((directory / _STATE_FILE).read_text())
        if state.get("format") != _STATE_FORMAT:
            raise ConfigError(
                f"{directory / _STATE_FILE} has format {state.get('format')!r}, expected {_STATE_FORMAT}; "
                "save the agent again with this version"
            )
        config = DDPGConfig(**state["config"])
        with torch.random.fork_rng(devices=[]):  # SB3 builds throwaway networks before loading weights
            model = DDPG.load(directory / _MODEL_FILE, device=device)
        model.load_replay_buffer(directory / _BUFFER_FILE)
        agent = cls.__new__(cls)
        agent._setup(model, config, state["seed"])
        agent.episode = state["episode"]
        agent.updates = state["updates"]
        agent._sigma = state["sigma"]
        agent._baseline = state["baseline"]
        agent._rng.bit_generator.state = state["rng_state"]
        return agent


def warmup_actions(design: str, episodes: int, groups: int, seed: int) -> np.ndarray:
    """The actions of the warm-up episodes, ``(episodes, groups)`` float32 in [-1, 1].

    ``lhs``: a scrambled Latin hypercube (scipy's ``qmc.LatinHypercube``, seeded): in each group, the warm-up's
    actions fall one in each of ``episodes`` equal bins of [-1, 1], so the warm-up covers every group's range
    evenly, however short it is. ``uniform``: independent uniform actions from a generator seeded with ``seed``.
    """
    if design == "lhs":
        from scipy.stats import qmc

        unit = qmc.LatinHypercube(d=groups, seed=np.random.default_rng(seed)).random(episodes)
    else:
        unit = np.random.default_rng(seed).random((episodes, groups))
    return (2.0 * unit - 1.0).astype(np.float32)


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss``: gradients cleared, back-propagated, applied."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
