"""What can be tested without a Docker engine: the compose file parses and its commands are real."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from agents.search import SearchConfig
from amc.cli import build_parser

DOCKER = Path(__file__).resolve().parents[1] / "docker"
RAY = ("ray-head", "ray-worker", "app")


def _services() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def test_compose_has_the_services() -> None:
    services = _services()
    assert {"mlflow", "ray-head", "ray-worker", "app"} <= set(services)
    for name in ("ray-head", "ray-worker", "app"):
        assert services[name]["shm_size"], f"{name} needs shared memory for Ray's object store"
    assert "--allowed-hosts" in services["mlflow"]["command"]


def _commands() -> dict[str, list[str]]:
    """Every command the compose file runs (service -> argv) and the image's default command."""
    commands = {
        name: shlex.split(svc["command"]) if isinstance(svc["command"], str) else list(svc["command"])
        for name, svc in _services().items()
    }
    cmd = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(cmd) == 1, "the Dockerfile has one default command"
    commands["Dockerfile CMD"] = json.loads(cmd[0][4:])
    return commands


def _parse_amc(argv: list[str]) -> argparse.Namespace:
    """Parses ``amc`` arguments with the real CLI parser; a bad flag fails the test with argparse's message."""
    parser, err = build_parser(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code == 0:  # --help
                return argparse.Namespace(command=None)
            pytest.fail(f"`amc {' '.join(argv)}` is not accepted by the CLI: {err.getvalue().strip()}")


def test_every_command_is_a_known_program() -> None:
    programs = {name: argv[0] for name, argv in _commands().items()}
    assert set(programs.values()) <= {"amc", "ray", "mlflow"}, programs
    assert programs["app"] == "amc" and programs["Dockerfile CMD"] == "amc"


def test_amc_commands_parse_with_the_cli() -> None:
    amc_commands = {name: argv for name, argv in _commands().items() if argv[0] == "amc"}
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    for name, argv in amc_commands.items():
        args = _parse_amc(argv[1:])
        if args.command is None:
            continue
        assert args.command in subcommands, name
        if getattr(args, "config", None) is not None:
            config = DOCKER.parent / args.config
            assert config.is_file(), f"{name}: {args.config} is not in the repository (the image copies experiments/)"
            SearchConfig.from_yaml(config)  # and it loads
    app = _parse_amc(amc_commands["app"][1:])
    assert app.command == "search" and app.address == "ray-head:6379" and app.tracking_uri == "http://mlflow:5000"


def test_a_bad_flag_would_be_caught() -> None:
    with pytest.raises(pytest.fail.Exception, match="--no-such-flag"):
        _parse_amc(["search", "--no-such-flag"])


@pytest.mark.parametrize("service", ["ray-head", "ray-worker"])
def test_ray_commands_parse(service: str) -> None:
    from ray.scripts.scripts import start

    argv = shlex.split(_services()[service]["command"])
    assert argv[:2] == ["ray", "start"]
    ctx = start.make_context("start", argv[2:])  # click validates every option without starting Ray
    assert ctx.params["block"] is True


def test_every_ray_process_uses_the_same_token_authentication() -> None:
    services = _services()
    head = _start_params("ray-head")
    worker = _start_params("ray-worker")
    app = _parse_amc(shlex.split(services["app"]["command"])[1:])
    assert worker["address"] == app.address == f"ray-head:{head['port']}", "workers and the app join the head"
    auth = {name: {k: v for k, v in services[name]["environment"].items() if k.startswith("RAY_AUTH")} for name in RAY}
    assert auth["ray-head"]["RAY_AUTH_MODE"] == "token", "the head is not open to anyone who reaches it"
    assert auth["ray-head"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), "the token comes from the user"
    assert auth["ray-worker"] == auth["app"] == auth["ray-head"], "head, workers and driver share mode and token"


def _start_params(service: str) -> dict:
    """The options of a compose service's ``ray start`` command, as click parses them."""
    from ray.scripts.scripts import start

    return start.make_context("start", shlex.split(_services()[service]["command"])[2:]).params


def test_mlflow_server_command_parses() -> None:
    from mlflow.cli import server

    argv = shlex.split(_services()["mlflow"]["command"])
    assert argv[:2] == ["mlflow", "server"]
    ctx = server.make_context("server", argv[2:])
    assert ctx.params["port"] == 5000


def test_dockerfile_installs_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "constraints.txt" in text and "pip install" in text
    copies = [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("COPY ")]
    sources = [src for args in copies for src in args[:-1] if not src.startswith("--")]
    assert {"amc", "envs", "agents", "pyproject.toml", "constraints.txt"} <= set(sources)
    for src in sources:  # the build context is the repository root
        assert (DOCKER.parent / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"
    for package in ("amc", "envs", "agents"):
        assert (DOCKER.parent / package / "__init__.py").is_file()
    # `pip install -e .` gives the `amc` command the compose file runs
    scripts = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["amc"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
