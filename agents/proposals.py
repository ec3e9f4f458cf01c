"""Critic-ranked proposals: the DDPG agent looks before it plays.

An episode costs a pruning, a BatchNorm re-estimation and an evaluation (~100-500 ms); the critics cost
microseconds. So instead of playing one noisy actor episode, the agent walks ``count`` of them through the
budget wall without evaluating any (:meth:`envs.ChannelPruningEnv.walk`: the observations and the wall depend
only on the kept channel counts), values each with its critics and plays the one valued most. Every
transition of an episode is stored with the episode's final reward, so each critic's ``Q(s_t, a_t)`` is a
prediction of that reward; a proposal's value is the mean of those predictions over its steps, averaged over
the critics, plus ``optimism`` times their spread (the critics disagree most where they have seen least).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.ddpg import AMCDDPG, truncated_normal_action


@dataclass(frozen=True)
class Proposal:
    """The proposal chosen for an episode.

    Attributes:
        actions: One action per group, in [-1, 1] (before the wall; the env applies the wall again, alike).
        value: Its value (mean over critics of the per-step predictions' mean, plus optimism x spread).
        predicted: The critics' mean prediction of its final reward (the value without the optimism term).
        spread: The standard deviation of that prediction over the critics (0 with one critic).
        best_of: How many proposals it was chosen from.
    """

    actions: tuple[float, ...]
    value: float
    predicted: float
    spread: float
    best_of: int


@dataclass(frozen=True)
class Proposals:
    """Proposals walked through the wall, with the critics' view of each.

    Attributes:
        actions: ``(count, groups)`` actions in [-1, 1] as proposed (before the wall).
        applied: ``(count, groups)`` the actions the wall lets through.
        predicted: ``(count,)`` the critics' mean prediction of each proposal's final reward.
        spread: ``(count,)`` the standard deviation of that prediction over the critics.
        value: ``(count,)`` ``predicted + optimism * spread``.
    """

    actions: np.ndarray
    applied: np.ndarray
    predicted: np.ndarray
    spread: np.ndarray
    value: np.ndarray

    def best(self) -> Proposal:
        """The proposal of the highest value (the first of equals)."""
        i = int(np.argmax(self.value))
        return Proposal(
            tuple(float(a) for a in self.actions[i]),
            float(self.value[i]),
            float(self.predicted[i]),
            float(self.spread[i]),
            len(self.value),
        )


def walk_proposals(
    env,
    agent: AMCDDPG,
    sigma: float,
    rng: np.random.Generator,
    count: int,
    optimism: float = 0.0,
    elites: np.ndarray | None = None,
    value_steps: str = "mean",
    target: float | None = None,
) -> Proposals:
    """Walks ``count`` noisy episodes through ``env``'s wall (nothing is evaluated) and values each.

    Args:
        env: The channel-pruning environment (:class:`envs.ChannelPruningEnv`).
        agent: The DDPG agent whose actor proposes and whose critics value.
        sigma: Truncated-normal noise around each proposal's centre, per step (AMC's exploration).
        rng: Draws the noise.
        count: Proposals walked.
        optimism: Weight of the critics' spread in the value.
        elites: ``(k, groups)`` actions of the best episodes so far: the proposals after the first half are
            centred on them in turn instead of on the actor (None or empty: every proposal follows the actor).
        value_steps: Which steps' predictions value a proposal: ``mean`` (all of them) or ``last`` (the last
            step's: with the history in the observation, the whole policy).
        target: The episode's target when the search has several (None: the env's current one).
    """
    groups = len(env.group_names)
    raw = np.zeros((count, groups), dtype=np.float32)
    centred = np.zeros(count, dtype=bool)
    elite_rows = np.zeros((0, groups))
    if elites is not None and len(elites):
        centred[count // 2 :] = True
        elite_rows = np.asarray(elites, dtype=np.float64)[np.arange(int(centred.sum())) % len(elites)]

    def policy(index: int, observations: np.ndarray) -> np.ndarray:
        mu = agent.actor_actions(observations)
        mu[centred] = elite_rows[:, index]
        raw[:, index] = truncated_normal_action(mu, sigma, rng)
        return raw[:, index]

    observations, applied = env.walk(policy, count, target)
    if value_steps == "last":  # only the last decision's state and action are valued
        per_critic = agent.q_values(observations[:, groups - 1], applied[:, groups - 1])  # (critics, count)
    else:
        q = agent.q_values(observations[:, :-1].reshape(count * groups, -1), applied.reshape(-1))
        per_critic = q.reshape(len(q), count, groups).mean(axis=2)
    predicted, spread = per_critic.mean(axis=0), per_critic.std(axis=0)
    return Proposals(raw, applied, predicted, spread, predicted + optimism * spread)
