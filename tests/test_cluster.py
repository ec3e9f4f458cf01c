"""`amc search --address HOST:PORT` against a real head started with `ray start --head --block`.

The head runs as a new user's would: ``ray start`` finds a token in ``~/.ray/auth_token`` (here a
temporary HOME) and turns Ray's token authentication on; the search joins it without being told.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, save_yaml
from envs import EnvConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
AMC = [sys.executable, "-c", "import sys; from amc.cli import main; sys.exit(main())"]
RAY = str(Path(sys.executable).with_name("ray"))
EPISODES = 6
HEAD_START_S = 180
SEARCH_S = 600
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    """This environment with ``home`` as HOME, no Ray authentication settings, and this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def head():
    """A Ray head with token authentication on (``ray start --head --block``); yields its address and HOME."""
    if not Path(RAY).is_file():
        pytest.skip("the ray command is not installed next to this interpreter")
    root = Path(tempfile.mkdtemp(prefix="amcray", dir="/tmp"))  # short: Ray's socket paths live below it
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    port, log = _free_port(), root / "head.log"
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    cmd += [f"--temp-dir={root / 'ray'}", "--disable-usage-stats"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_S
        while "Ray runtime started" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert proc.poll() is None and "Ray runtime started" in text, f"the head did not start:\n{text[-3000:]}"
        assert "Token authentication is enabled" in text, "ray start turns token authentication on"
        yield f"127.0.0.1:{port}", home
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # --block: the head stops its GCS, raylet and workers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def config_file(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = EnvConfig(
        model="resnet20", checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.4, eval_batches=1, bn_batches=1
    )
    config = SearchConfig(
        env=env,
        agent="ddpg",
        episodes=EPISODES,
        seed=3,
        ddpg=DDPGConfig(hidden=(32, 32), warmup_episodes=3, batch_size=8),
        experiment="test-cluster",
        workers=2,
        threads=1,
    )
    path = tmp_path_factory.mktemp("cluster") / "config.yaml"
    save_yaml(config, path)
    return path


def _search(config: Path, address: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [*AMC, "-v", "search", "--config", str(config), "--address", address, "--no-tracking", "--out", str(out)]
    return subprocess.run(argv, env=env, cwd=out.parent, capture_output=True, text=True, timeout=SEARCH_S)


def test_search_joins_a_token_authenticated_head(head, config_file: Path, tmp_path: Path) -> None:
    address, home = head
    proc = _search(config_file, address, tmp_path / "search", _env(home))
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "uses token authentication" in proc.stderr, "the search found out by itself that the head wants a token"
    assert "InvalidAuthToken" not in proc.stderr
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert [e["episode"] for e in summary["episodes"]] == list(range(EPISODES))
    assert all(e["flops_ratio"] <= 0.4 + 1e-9 for e in summary["episodes"])


def test_without_the_token_the_search_says_what_to_set(head, config_file: Path, tmp_path: Path) -> None:
    address, _ = head
    elsewhere = tmp_path / "home"  # another machine: no ~/.ray/auth_token
    elsewhere.mkdir()
    out = tmp_path / "search"
    proc = _search(config_file, address, out, _env(elsewhere))
    assert proc.returncode == 2, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("amc search: error:") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "token authentication" in error and "RAY_AUTH_TOKEN" in error and "ray get-auth-token" in error
    assert not (out / "config.yaml").exists(), "the same command can be run again once the token is set"
