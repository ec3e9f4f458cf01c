"""The MLflow UI on this project's store: the server command, its checks and its addresses."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import quote, urlparse

from amc.errors import ConfigError

UI_HOST = "127.0.0.1"
PARETO_FILTER = 'tags.amc.pareto = "true"'


def ui_command(tracking_uri: str, port: int) -> list[str]:
    """The ``mlflow server`` command line serving ``tracking_uri`` on 127.0.0.1:``port``."""
    hosts = f"{UI_HOST}:{port},localhost:{port},{UI_HOST},localhost"
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        UI_HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        hosts,
    ]


def check_store(tracking_uri: str) -> None:
    """Refuses a store that is already a server, or a local store (SQLite file, file store) that does not exist."""
    from amc.service.tracking import require_store

    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https", "databricks"):
        raise ConfigError(f"{tracking_uri} is already an MLflow server; open it in a browser instead of `amc ui`")
    require_store(tracking_uri)


def check_port_free(port: int) -> None:
    """Raises ConfigError when 127.0.0.1:``port`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((UI_HOST, port))
        except OSError:
            raise ConfigError(f"port {port} on {UI_HOST} is in use; pass another --port") from None


def ui_urls(port: int, experiment_id: str | None = None, pareto_run_id: str | None = None) -> list[str]:
    """The UI's address and, for an experiment, its runs table, its runs owning a Pareto-front point and (with
    ``pareto_run_id``) the Artifacts page of its Pareto run, where the front plot and tables are."""
    base = f"http://{UI_HOST}:{port}/"
    if experiment_id is None:
        return [base]
    runs = f"{base}#/experiments/{experiment_id}/runs"
    urls = [base, runs, f"{runs}?searchFilter={quote(PARETO_FILTER)}"]
    if pareto_run_id is not None:
        urls.append(f"{runs}/{pareto_run_id}/artifacts")
    return urls


def has_pareto_front(client: Any, experiment_id: str) -> bool:
    """Whether any run of the experiment is tagged as owning a Pareto-front point (``amc pareto`` tags them)."""
    return bool(client.search_runs([experiment_id], PARETO_FILTER, max_results=1))


def ui_lines(
    port: int,
    experiment: str | None = None,
    experiment_id: str | None = None,
    front: bool = True,
    tracking_uri: str | None = None,
    pareto_run_id: str | None = None,
) -> list[str]:
    """The lines ``amc ui`` prints: the UI's address and, for an experiment, its runs and its Pareto front.

    Args:
        port: The UI's port on 127.0.0.1.
        experiment: Experiment name.
        experiment_id: Its id (None: only the UI's address).
        front: Whether the experiment has a Pareto front (see :func:`has_pareto_front`); without one, the
            last line says to run ``amc pareto`` first instead of giving a filter that matches no run.
        tracking_uri: A ``--tracking-uri`` to repeat in that ``amc pareto`` command.
        pareto_run_id: The experiment's Pareto run (:func:`amc.service.pareto.find_pareto_run`): its Artifacts
            page holds the front plot (``pareto_front.png``) and tables, the line printed for the front.
    """
    urls = ui_urls(port, experiment_id, pareto_run_id if front else None)
    lines = [f"  {urls[0]}"]
    if experiment_id is None:
        return lines
    experiment = experiment if experiment is not None else experiment_id
    lines.append(f"  {urls[1]}   runs of {experiment!r}")
    if front:
        lines.append(f"  {urls[2]}   its runs owning a Pareto-front point ({PARETO_FILTER})")
        if len(urls) > 3:
            lines.append(f"  {urls[3]}   its Pareto front: pareto_front.png and the tables (run pareto-front)")
    else:
        cmd = f"amc pareto --experiment {shlex.quote(experiment)}"
        if tracking_uri:
            cmd += f" --tracking-uri {shlex.quote(tracking_uri)}"
        lines.append(f"  no Pareto front yet in experiment {experiment!r}: run `{cmd}` first, then open {urls[2]}")
    return lines


def serve(cmd: list[str]) -> int:
    """Runs the server in the foreground; SIGTERM and Ctrl-C stop it too."""
    proc = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "PARETO_FILTER",
    "UI_HOST",
    "check_port_free",
    "check_store",
    "has_pareto_front",
    "serve",
    "ui_command",
    "ui_lines",
    "ui_urls",
]
