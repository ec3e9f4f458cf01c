"""MLflow tracking: one run per search, per-episode metrics, artifacts.

The store is chosen as in every command: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the
project's local SQLite file (``sqlite:///<cwd>/mlflow.db``). Metrics are buffered and written in
batches when the search checkpoints, so a resumed search never logs an episode twice.

Artifacts never land in the current directory: an experiment created here keeps them under the
configured artifact root (``--artifact-root`` / ``$AMC_ARTIFACT_ROOT``) or, with a SQLite store, in
``mlartifacts/`` next to the database file (see :func:`experiment_artifact_location`). An MLflow server
(``http://``) keeps its own artifact handling.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from amc.errors import ConfigError

DEFAULT_DB = "mlflow.db"
ARTIFACT_ROOT_ENV = "AMC_ARTIFACT_ROOT"
"""Environment variable naming the directory (or URI) under which new experiments keep their artifacts."""
ARTIFACTS_DIR = "mlartifacts"
"""Directory next to a SQLite database that holds the artifacts of the experiments created here."""
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file in the working directory; a local store's relative
    path made absolute (:func:`absolute_uri`) now, so that the store stays the one this working directory meant
    (MLflow keeps one database engine per URI string for the life of the process)."""
    if uri:
        return absolute_uri(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return absolute_uri(env)
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths: to the working directory); None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def absolute_uri(uri: str) -> str:
    """``uri`` with a local store's relative path made absolute (``sqlite:///`` files, file stores); others as given.

    What a command prints, so that the store is found again from any working directory.
    """
    db = sqlite_path(uri)
    if db is not None:
        return f"sqlite:///{db}{'?' + uri.split('?', 1)[1] if '?' in uri else ''}"
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path).expanduser().resolve().as_uri()
    if parsed.scheme == "":
        return str(Path(uri).expanduser().resolve())
    return uri


def require_store(uri: str) -> None:
    """Refuses a local store that does not exist yet: commands that only read must not create one.

    MLflow creates a SQLite database file (and a file store's directory) the first time a client uses it,
    so the check comes before any client is made. Servers and other databases are not checked here.

    Raises:
        ConfigError: ``uri`` is a ``sqlite:///`` file or a file store (``file:`` URI or a path) that is not there.
    """
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise ConfigError(f"there is no MLflow store at {db}; run `amc search` first or pass --tracking-uri")
        return
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"there is no MLflow store at {path}; run `amc search` first or pass --tracking-uri")


SHORT_ID_LENGTH = 6
"""Characters of a run id appended to its run name."""


def unique_run_name(base: str, run_id: str, start_time_ms: int) -> str:
    """``<base>-<YYYYmmdd-HHMM>-<short id>``: the run's start time (UTC) and the first characters of its run id.

    Two runs of one config (same model, target, agent and seed) thus get different names.
    """
    start = _dt.datetime.fromtimestamp(start_time_ms / 1000, tz=_dt.UTC)
    return f"{base}-{start:%Y%m%d-%H%M}-{run_id[:SHORT_ID_LENGTH]}"


def experiment_artifact_location(uri: str, experiment: str, artifact_root: str | Path | None = None) -> str | None:
    """Where a new experiment named ``experiment`` keeps its run artifacts (None: the store decides).

    Args:
        uri: Tracking URI of the store the experiment is created in.
        experiment: Experiment name (a directory-safe form of it names the experiment's directory).
        artifact_root: Directory or URI (``s3://...``) holding the experiments' artifact directories;
            None: ``$AMC_ARTIFACT_ROOT``, else ``mlartifacts/`` next to a SQLite database file.

    Returns:
        ``<root>/<experiment>``; None for an MLflow server (``http://``, ``https://``, ``databricks``), which
        keeps its own artifact handling, and for a file store without a configured root (it keeps artifacts
        in its own directory).

    Raises:
        ConfigError: ``artifact_root`` is given for an MLflow server, or the store is a database without a
            file (in-memory SQLite, PostgreSQL, MySQL, MSSQL) and no artifact root is configured: MLflow
            would write into the current directory.
    """
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    if scheme in _SERVER_SCHEMES:
        if artifact_root:
            raise ConfigError(
                f"--artifact-root is for local stores; the MLflow server {uri} keeps artifacts where its "
                "--artifacts-destination / --default-artifact-root says: drop --artifact-root"
            )
        return None
    root = str(artifact_root) if artifact_root else os.environ.get(ARTIFACT_ROOT_ENV) or None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    if root is not None:
        if "://" in root:
            return f"{root.rstrip('/')}/{slug}"
        return str(Path(root).expanduser().resolve() / slug)
    db = sqlite_path(uri)
    if db is not None:
        return str(db.parent / ARTIFACTS_DIR / slug)
    if scheme == "sqlite" or scheme in _DATABASE_SCHEMES:
        raise ConfigError(
            f"the MLflow store {uri} has no directory to keep run artifacts in; set ${ARTIFACT_ROOT_ENV} "
            "(or pass --artifact-root) to a directory or URI for them"
        )
    return None


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ModuleNotFoundError as exc:  # pragma: no cover - part of the pinned stack
        raise ModuleNotFoundError("MLflow is needed for tracking: pip install mlflow") from exc
    # "Creating initial MLflow database tables..." on a new SQLite store is MLflow's business, not the user's
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


class RunTracker:
    """Writes one MLflow run; metrics are buffered until :meth:`flush`.

    Args:
        uri: Tracking URI (see :func:`resolve_tracking_uri`).
        experiment: Experiment name (created when missing).
        run_name: Name of a new run; its start time and the start of its run id are appended (see
            :func:`unique_run_name`), so every run has a name of its own.
        run_id: Continue this existing run instead of creating one (resume).
        tags: Tags set on a new run.
        parent_run_id: Makes the new run a child of this one (sweeps).
        artifact_root: Artifact root of the experiment when it is created here (see
            :func:`experiment_artifact_location`); an existing experiment keeps its own.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        artifact_root: str | Path | None = None,
    ) -> None:
        self.uri = uri
        self.client = _client(uri)
        if run_id is None:
            exp_id = self._experiment_id(experiment, artifact_root)
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            info = self.client.create_run(exp_id, run_name=run_name, tags=all_tags).info
            run_id, self.run_name = info.run_id, info.run_name
            if run_name:
                self.run_name = unique_run_name(run_name, run_id, info.start_time)
                self.client.update_run(run_id, name=self.run_name)
        else:
            self.run_name = self.client.get_run(run_id).info.run_name
        self.run_id = run_id
        self._pending: list[Any] = []

    def _experiment_id(self, name: str, artifact_root: str | Path | None) -> str:
        """The id of experiment ``name``, created (with its artifact location) when missing."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = experiment_artifact_location(self.uri, name, artifact_root)
        try:  # the experiment kind opens the MLflow UI on the runs table
            return self.client.create_experiment(
                name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)  # created meanwhile by a concurrent search
            if exp is None:
                raise
            return exp.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffers ``metrics`` at ``step``; non-finite values are skipped."""
        import time

        from mlflow.entities import Metric

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
