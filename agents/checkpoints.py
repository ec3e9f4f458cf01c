"""A search directory's state: its checkpoints (the agent, the episode records, the agent's statistics, the plans not yet
learned from) and its stored config (what ``--resume`` continues with).

``<search dir>/checkpoint/ep-NNNNNN/`` holds the latest one (``LATEST`` names it; the switch is atomic):
``agent/`` (what :meth:`agents.base.SearchAgent.save` writes), ``state.json`` (counters, records, statistics,
the MLflow run, and the dense model's evaluation fingerprint) and ``plans.pt``. :mod:`agents.search` writes and
resumes them; :mod:`agents.warm_start` reads another search's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.base import EpisodePlan, SearchAgent
from agents.records import EpisodeRecord, SearchConfig, SearchState
from amc.errors import ConfigError
from amc.files import write_json_atomic, write_text_atomic

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_VERSION = 3
"""Version of a checkpoint's ``state.json`` (1, without a version field: no per-episode agent statistics;
2: no saved plans, and a random agent's one random stream in ``agent/rng.json``)."""
PLANS_FILE = "plans.pt"
"""The plans made and not yet learned from, next to ``state.json`` (its ``planned`` lists their episodes)."""


def save_checkpoint(out: Path, agent: SearchAgent, state: SearchState) -> None:
    """Writes the checkpoint of ``state.episode`` finished episodes, then makes it the latest (old ones go)."""
    root = out / CHECKPOINT_DIR
    target = root / f"ep-{state.episode:06d}"
    tmp = root / f".tmp-{state.episode:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    agent.save(tmp / "agent")
    plans = [state.plans[e] for e in sorted(state.plans)]
    if plans:
        import torch

        tmp.mkdir(parents=True, exist_ok=True)
        torch.save([dataclasses.asdict(p) for p in plans], tmp / PLANS_FILE)
    write_json_atomic(
        tmp / "state.json",
        {
            "version": CHECKPOINT_VERSION,
            "episode": state.episode,
            "run_id": state.run_id,
            "tracking_uri": state.tracking_uri,
            "records": [dataclasses.asdict(r) for r in state.records],
            "agent_stats": {str(k): v for k, v in sorted(state.agent_stats.items())},
            "planned": [p.episode for p in plans],
            "fingerprint": state.fingerprint,
            "warm_start": state.warm_start,
        },
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    write_text_atomic(root / "LATEST", target.name + "\n")  # the switch to the new checkpoint is atomic
    for old in root.glob("ep-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest checkpoint directory of the search in ``out`` and its state, or None."""
    root = out / CHECKPOINT_DIR
    latest = root / "LATEST"
    if not latest.is_file():
        return None
    where = root / latest.read_text().strip()
    data = json.loads((where / "state.json").read_text())
    version = int(data.get("version", 1))
    if version > CHECKPOINT_VERSION:
        raise ConfigError(
            f"{where} is a version {version} checkpoint, written by a newer amc-search (this one reads "
            f"up to version {CHECKPOINT_VERSION}); upgrade amc-search to resume this search"
        )
    return where, data


def read_checkpoint(out: Path) -> tuple[Path, SearchState, dict[str, Any]] | None:
    """The latest checkpoint of the search in ``out``: its directory, the state it holds without the plans, and
    its ``state.json`` (None: no checkpoint)."""
    found = latest_checkpoint(out)
    if found is None:
        return None
    where, data = found
    records = [EpisodeRecord(**r) for r in data["records"]]
    state = SearchState(int(data["episode"]), records, data.get("run_id"), data.get("tracking_uri"), _agent_stats(data))
    state.fingerprint, state.warm_start = data.get("fingerprint"), data.get("warm_start")
    return where, state, data


def load_checkpoint(out: Path, agent: SearchAgent) -> SearchState:
    """Restores ``agent`` from the latest checkpoint of the search in ``out`` and returns the state (fresh: none)."""
    found = read_checkpoint(out)
    if found is None:
        return SearchState()
    where, state, data = found
    agent.restore(where / "agent")
    if data.get("planned"):
        import torch

        for fields in torch.load(where / PLANS_FILE, weights_only=True):
            plan = EpisodePlan(**{**fields, "actions": tuple(fields["actions"])})
            state.plans[plan.episode] = plan
    return state


def _agent_stats(data: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    return {int(k): {n: float(v) for n, v in stats.items()} for k, stats in data.get("agent_stats", {}).items()}


def checkpointed_agent_stats(out: Path) -> dict[int, dict[str, float]]:
    """The agent's statistics per episode stored in the latest checkpoint of the search in ``out`` (empty: none)."""
    found = latest_checkpoint(out)
    return {} if found is None else _agent_stats(found[1])


LEGACY_WORKERS = {0: "auto", 1: 0}
"""``workers`` of a search directory written before ``max_staleness`` existed, in today's terms (it then meant
0: one Ray actor per local CPU, 1: in-process; N > 1 is unchanged)."""


def stored_config(out: Path) -> SearchConfig:
    """The config of the search in ``out`` (its ``config.yaml``, which ``--resume`` continues with).

    A ``config.yaml`` without ``max_staleness`` was written by an older amc-search, which counted
    ``workers`` differently (see :data:`LEGACY_WORKERS`); its workers are read in today's terms, so the
    search resumes on the same workers with the same schedule. One whose ``env`` has no ``observe_history``
    was written before the history joined the observation: it resumes with AMC's observation, which its saved
    agent was built for.
    """
    from amc.config import parse_yaml

    path = out / "config.yaml"
    config = SearchConfig.from_yaml(path)
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if "max_staleness" not in raw and config.workers in LEGACY_WORKERS:
        config = config.replace(workers=LEGACY_WORKERS[config.workers])
    if "observe_history" not in (raw.get("env") or {}):
        config = config.replace(env=config.env.replace(observe_history=False))
    return config
