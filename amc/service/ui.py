"""The MLflow UI on this project's store: the server command, its checks and its addresses."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
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
    """Refuses a store that is already a server, or a SQLite file that does not exist."""
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https", "databricks"):
        raise ConfigError(f"{tracking_uri} is already an MLflow server; open it in a browser instead of `amc ui`")
    if scheme == "sqlite":
        path = Path(tracking_uri[len("sqlite:///") :])
        if not path.is_file():
            raise ConfigError(f"there is no MLflow store at {path}; run `amc search` first or pass --tracking-uri")


def check_port_free(port: int) -> None:
    """Raises ConfigError when 127.0.0.1:``port`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((UI_HOST, port))
        except OSError:
            raise ConfigError(f"port {port} on {UI_HOST} is in use; pass another --port") from None


def ui_urls(port: int, experiment_id: str | None = None) -> list[str]:
    """The UI's address and, for an experiment, its runs table and its Pareto-front runs in chart view."""
    base = f"http://{UI_HOST}:{port}/"
    if experiment_id is None:
        return [base]
    runs = f"{base}#/experiments/{experiment_id}/runs"
    return [base, runs, f"{runs}?searchFilter={quote(PARETO_FILTER)}&compareRunsMode=CHART"]


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


__all__ = ["PARETO_FILTER", "UI_HOST", "check_port_free", "check_store", "serve", "ui_command", "ui_urls"]
