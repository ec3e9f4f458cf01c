"""The RL agents, the search loop and the sweeps (imports point one way: agents -> envs -> amc).

Importing the package registers every agent in :data:`agents.base.AGENTS`: ``ddpg``, ``random`` and
``uniform`` (:mod:`agents.base`), ``global``, ``sensitivity`` and ``tpe`` (:mod:`agents.baselines`).
"""

import agents.baselines  # noqa: F401  (registers global, sensitivity and tpe)
