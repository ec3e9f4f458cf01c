"""MLflow tracking: one run per search, per-episode metrics, artifacts.

The store is chosen as in every command: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the
project's local SQLite file (``sqlite:///<cwd>/mlflow.db``). Metrics are buffered and written in
batches when the search checkpoints, so a resumed search never logs an episode twice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file in the working directory."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ModuleNotFoundError as exc:  # pragma: no cover - part of the pinned stack
        raise ModuleNotFoundError("MLflow is needed for tracking: pip install mlflow") from exc
    return MlflowClient(tracking_uri=uri)


class RunTracker:
    """Writes one MLflow run; metrics are buffered until :meth:`flush`.

    Args:
        uri: Tracking URI (see :func:`resolve_tracking_uri`).
        experiment: Experiment name (created when missing).
        run_name: Name of a new run.
        run_id: Continue this existing run instead of creating one (resume).
        tags: Tags set on a new run.
        parent_run_id: Makes the new run a child of this one (sweeps).
    """

    def __init__(
        self, uri: str, experiment: str, run_name: str | None = None, run_id: str | None = None,
        tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
    ) -> None:
        self.uri = uri
        self.client = _client(uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                experiment, tags={"mlflow.experimentKind": "custom_model_development"})  # opens on the runs table
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
        self.run_id = run_id
        self._pending: list[Any] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffers ``metrics`` at ``step``; non-finite values are skipped."""
        from mlflow.entities import Metric

        import time

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if v is not None and math.isfinite(float(v)):
                self._pending.append(Metric(k, float(v), now, int(step)))

    def flush(self) -> None:
        """Writes the buffered metrics."""
        for i in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[i : i + 1000])
        self._pending = []

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)
