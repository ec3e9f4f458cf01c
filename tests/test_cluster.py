"""`amc search --address HOST:PORT` against a real head started with `ray start --head --block`, and a second node.

The head runs as a new user's would: ``ray start`` finds a token in ``~/.ray/auth_token`` (here a
temporary HOME) and turns Ray's token authentication on; the search joins it without being told. A second
node joins with ``ray start --address --block``; each node has one CPU, so a search with two workers plays
on both, and the second node is killed (its raylet and workers, SIGKILL) in the middle of a search.
"""

from __future__ import annotations

import contextlib
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
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    cmd += [f"--temp-dir={root / 'ray'}", "--disable-usage-stats"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = _started(proc, log, "the head")
        assert "Token authentication is enabled" in text, "ray start turns token authentication on"
        yield f"127.0.0.1:{port}", home
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _started(proc: subprocess.Popen, log: Path, what: str) -> str:
    """Waits for ``ray start --block`` to say it started; returns its log."""
    deadline = time.monotonic() + HEAD_START_S
    while "Ray runtime started" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert proc.poll() is None and "Ray runtime started" in text, f"{what} did not start:\n{text[-3000:]}"
    return text


def _stop(proc: subprocess.Popen) -> None:
    """Stops a ``ray start --block`` process: SIGTERM stops its node's processes; SIGKILL to its group after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def second_node(head, tmp_path: Path):
    """A second Ray node with one CPU joining the head (``ray start --address --block``), in its own process group."""
    address, home = head
    log = tmp_path / "node2.log"
    cmd = [RAY, "start", f"--address={address}", "--block", "--num-cpus=1", "--disable-usage-stats"]
    env = {**_env(home), "RAY_AUTH_MODE": "token"}  # a node joining by HOST:PORT sends the token only when told
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _started(proc, log, "the second node")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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


def _tree(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grown = {pid}, True
    while grown:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    return tree


def _rollout_worker_in(pid: int) -> bool:
    """Whether a rollout worker actor (process title ``ray::_Worker...``) runs below ``pid``."""
    for child in _tree(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::_Worker"):
                return True
    return False


def _kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it (Ray's workers run in process groups of their own)."""
    for victim in _tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def test_losing_a_node_mid_search_loses_no_episode(head, second_node, trained_resnet20: Path, tmp_path: Path) -> None:
    """The search joins the token-authenticated head by itself; two workers on two one-CPU nodes; the second node is killed (SIGKILL to its raylet and workers) after a few
    episodes: the episode it was playing runs again on the head, the search finishes with every episode exactly once,
    and search.json says which worker was lost during which episode."""
    address, home = head
    episodes = 40
    env = EnvConfig(
        model="resnet20", checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.4, eval_batches=1, bn_batches=1
    )
    config = SearchConfig(env=env, agent="random", episodes=episodes, seed=5, workers=2, threads=1)
    save_yaml(config, tmp_path / "config.yaml")
    out = tmp_path / "search"
    argv = [*AMC, "-v", "search", "--config", str(tmp_path / "config.yaml"), "--address", address, "--no-tracking"]
    argv += ["--out", str(out)]
    log = tmp_path / "search.log"
    with open(log, "w") as stderr:
        search = subprocess.Popen(
            argv, env={**_env(home), "AMC_PROGRESS_INTERVAL": "0"}, cwd=tmp_path, stdout=stderr, stderr=stderr
        )
    try:
        deadline = time.monotonic() + SEARCH_S
        # a few episodes done, and the second node's worker started (killed before it exists, Ray would place it anew)
        while (
            search.poll() is None
            and time.monotonic() < deadline
            and not (f" 3/{episodes} " in log.read_text() and _rollout_worker_in(second_node.pid))
        ):
            time.sleep(0.05)
        assert search.poll() is None, f"the search ended before the node was killed:\n{log.read_text()[-3000:]}"
        _kill_tree(second_node.pid)  # the node's raylet and its workers, without warning
        second_node.wait()
        code = search.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
    text = log.read_text()
    assert code == 0, f"exit code {code}:\n{text[-3000:]}"
    assert "uses token authentication" in text, "the search found out by itself that the head wants a token"
    assert "InvalidAuthToken" not in text
    summary = json.loads((out / "search.json").read_text())
    assert [e["episode"] for e in summary["episodes"]] == list(range(episodes)), "nothing missing, nothing twice"
    rollouts = summary["rollouts"]
    assert rollouts["workers"] == 2, "one worker per node"
    assert len(rollouts["lost"]) == 1, f"{rollouts}\n{text[-3000:]}"
    lost = rollouts["lost"][0]["episode"]
    assert 3 <= lost < episodes, rollouts
    assert f"died during episode {lost}" in text


def test_a_sweep_on_two_nodes_logs_every_trial_to_an_mlflow_server(
    head, second_node, trained_resnet20: Path, tmp_path: Path
) -> None:
    """Two trials on two one-CPU nodes, tracked by an MLflow server on loopback: one finished child run per trial
    under the sweep's run, with its params, every episode's metrics and the search's files, each tagged with the node
    that ran it, and the two nodes both ran one."""
    import urllib.request

    from mlflow.tracking import MlflowClient

    from amc.service.ui import ui_command

    address, home = head
    port = _free_port()
    server_log = tmp_path / "mlflow.log"
    with open(server_log, "w") as log:
        server = subprocess.Popen(
            [
                *ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}", port),
                "--default-artifact-root",
                str(tmp_path / "art"),
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + HEAD_START_S
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{uri}/health", timeout=5)
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the MLflow server did not start:\n{server_log.read_text()[-3000:]}")
        env = EnvConfig(
            model="resnet20",
            checkpoint=str(trained_resnet20 / "model.pt"),
            target_ratio=0.4,
            eval_batches=1,
            bn_batches=1,
        )
        base = SearchConfig(env=env, agent="random", episodes=3, workers=0, threads=1, experiment="test-two-nodes")
        save_yaml(base, tmp_path / "base.yaml")
        (tmp_path / "sweep.yaml").write_text("name: nodes\nbase: base.yaml\ngrid:\n  env.target_ratio: [0.3, 0.5]\n")
        argv = [*AMC, "sweep", "--config", str(tmp_path / "sweep.yaml"), "--address", address, "--tracking-uri", uri]
        proc = subprocess.run(
            [*argv, "--out", str(tmp_path / "sweep")],
            env=_env(home),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=SEARCH_S,
        )
        assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("test-two-nodes")
        runs = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs if r.data.tags.get("amc.kind") == "sweep"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
        assert len(parent) == 1 and len(children) == 2, [r.data.tags for r in runs]
        assert sorted(r.data.params["env.target_ratio"] for r in children) == ["0.3", "0.5"], "one run per trial"
        assert all(r.info.status == "FINISHED" for r in runs)
        for child in children:
            assert len(client.get_metric_history(child.info.run_id, "reward")) == 3, "every episode logged"
            assert child.data.metrics["best_flops_ratio"] <= float(child.data.params["env.target_ratio"]) + 1e-9
            assert child.data.params["staleness_bound"] == "0", "trials run their episodes in-process"
            assert "search.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert len({r.data.tags["amc.ray_node"] for r in children}) == 2, "each node ran a trial"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
