"""What can be tested without a Docker engine: the compose file parses and its commands are real."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from amc.cli import build_parser

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _services() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def test_compose_has_the_services() -> None:
    services = _services()
    assert {"mlflow", "ray-head", "ray-worker", "app"} <= set(services)
    for name in ("ray-head", "ray-worker", "app"):
        assert services[name]["shm_size"], f"{name} needs shared memory for Ray's object store"
    assert "--allowed-hosts" in services["mlflow"]["command"]


def test_app_command_is_a_real_cli_command() -> None:
    argv = shlex.split(_services()["app"]["command"])
    assert argv[0] == "amc"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "search" and args.address == "ray-head:6379"
    assert (DOCKER.parent / args.config).is_file()


@pytest.mark.parametrize("service", ["ray-head", "ray-worker"])
def test_ray_commands_parse(service: str) -> None:
    from ray.scripts.scripts import start

    argv = shlex.split(_services()[service]["command"])
    assert argv[:2] == ["ray", "start"]
    ctx = start.make_context("start", argv[2:])  # click validates every option without starting Ray
    assert ctx.params["block"] is True


def test_mlflow_server_command_parses() -> None:
    from mlflow.cli import server

    argv = shlex.split(_services()["mlflow"]["command"])
    assert argv[:2] == ["mlflow", "server"]
    ctx = server.make_context("server", argv[2:])
    assert ctx.params["port"] == 5000


def test_dockerfile_installs_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "constraints.txt" in text and "pip install" in text
    for package in ("amc", "envs", "agents"):
        assert f"COPY {package}" in text
