"""Candidate collection: every policy the search runs of an MLflow experiment evaluated.

Every episode record in every search run's ``search.json`` is a candidate, not only each run's best.
MLflow is imported only when a client is made (:func:`mlflow_client`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amc.errors import ConfigError
from amc.service.front import Baseline, Candidate, SearchRun

log = logging.getLogger(__name__)

SEARCH_ARTIFACT = "search.json"
KIND_TAG = "amc.kind"
PARETO_KIND = "pareto"
_PROGRESS_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` on the existing store ``uri`` (MLflow imported here, with an install hint).

    Raises:
        ConfigError: ``uri`` is a local store that does not exist (checked first: MLflow would create it).
    """
    from amc.service.tracking import _client, require_store

    require_store(uri)
    return _client(uri)


def find_experiment(client: Any, name: str) -> Any:
    """The experiment called ``name``; raises ConfigError listing the store's experiments otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(
            f"no MLflow experiment named {name!r} in {client.tracking_uri}; it has: "
            f"{', '.join(names) or 'none'} (pass --tracking-uri for another store)"
        )
    return exp


def all_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every active run of an experiment, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], max_results=1000, page_token=token, order_by=["attributes.start_time ASC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def read_json_artifact(client: Any, run_id: str, name: str) -> dict | None:
    """A run's top-level JSON artifact ``name``, or None when the run has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="amc-artifact-") as tmp, _no_progress_bars():
        path = client.download_artifacts(run_id, name, tmp)
        try:
            return json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"artifact {name} of run {run_id} is not valid JSON: {exc}") from None


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Turns MLflow's artifact download progress bars off for one small download."""
    old = os.environ.get(_PROGRESS_VAR)
    os.environ[_PROGRESS_VAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_PROGRESS_VAR, None)
        else:
            os.environ[_PROGRESS_VAR] = old


def search_run_from_summary(run_id: str, run_name: str, summary: Mapping[str, Any]) -> SearchRun:
    """Builds a :class:`SearchRun` from a ``search.json`` summary."""
    try:
        candidates = tuple(
            Candidate(
                run_id,
                run_name,
                int(e["episode"]),
                float(e["top1"]),
                float(e["flops_ratio"]),
                float(e["params_ratio"]),
                _optional_float(e.get("latency_ratio")),
                {str(k): float(v) for k, v in e["ratios"].items()},
                _optional_float(e.get("latency_ms")),
                _optional_float(e.get("latency_ms_measured")),
            )
            for e in summary["episodes"]
        )
        u = summary.get("uniform")
        uniform = (
            Baseline(run_id, float(u["ratio"]), float(u["top1"]), float(u["flops_ratio"]), float(u["params_ratio"]))
            if u
            else None
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"search.json of run {run_id} is malformed ({type(exc).__name__}: {exc}); it should come from `amc search`"
        ) from None
    best = summary.get("best") or {}
    return SearchRun(run_id, run_name, candidates, uniform, best.get("episode"))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def load_search_runs(client: Any, experiment_id: str) -> tuple[SearchRun, ...]:
    """The experiment's search runs: runs with a ``search.json`` artifact (the Pareto run excluded)."""
    found = []
    for run in all_runs(client, experiment_id):
        if run.data.tags.get(KIND_TAG) == PARETO_KIND:
            continue
        summary = read_json_artifact(client, run.info.run_id, SEARCH_ARTIFACT)
        if summary is None:
            log.info("run %s has no %s (unfinished or not a search); skipped", run.info.run_id, SEARCH_ARTIFACT)
            continue
        found.append(search_run_from_summary(run.info.run_id, run.info.run_name or run.info.run_id, summary))
    return tuple(found)


__all__ = [
    "KIND_TAG",
    "PARETO_KIND",
    "SEARCH_ARTIFACT",
    "all_runs",
    "find_experiment",
    "load_search_runs",
    "mlflow_client",
    "read_json_artifact",
    "search_run_from_summary",
]
