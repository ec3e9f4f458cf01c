"""`amc ui` in a real headless browser: after a tiny search, the MLflow UI shows the run and its metrics.

Needs Debian's ``chromium`` (``make test`` installs it with apt-get) and Python Playwright (dev extra).
In CI a missing browser fails the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_search
from amc.service.pareto import update_pareto
from amc.service.ui import ui_urls
from envs import EnvConfig

pytestmark = pytest.mark.slow
EXPERIMENT = "test-ui"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 150  # the MLflow server takes about 20-30 s to start on 2 cores
PAGE_TIMEOUT_MS = 60_000
# the `amc` entry point
AMC = [sys.executable, "-c", "import sys; from amc.cli import main; sys.exit(main())"]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed: `make test` installs it (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`amc ui` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the MLflow UI did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path; decided before anything slow is set up."""
    return _chromium()


@pytest.fixture(scope="module")
def store(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh MLflow store with the test's experiment."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    return {"uri": uri, "root": root, "exp_id": exp_id}


@pytest.fixture(scope="module")
def server(store: dict) -> Iterator[dict]:
    """`amc ui` on the store, in its own process group (ended with it); it boots while the search runs."""
    _chromium()
    port, log = _free_port(), store["root"] / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*AMC, "ui", "--tracking-uri", store["uri"], "--port", str(port), "--experiment", EXPERIMENT],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield {"proc": proc, "port": port, "log": log}
    finally:
        _end_group(proc)


@pytest.fixture(scope="module")
def searched(server: dict, store: dict, request: pytest.FixtureRequest) -> dict:
    """A 3-episode random search logged to the store, with its Pareto front computed."""
    from mlflow.tracking import MlflowClient

    # asked for here, not as a parameter: pytest would train this session fixture before checking for the browser
    trained_resnet20: Path = request.getfixturevalue("trained_resnet20")

    env = EnvConfig(
        model="resnet20", checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.5, eval_batches=1, bn_batches=2
    )
    config = SearchConfig(
        env=env, agent="random", episodes=3, ddpg=DDPGConfig(hidden=(32, 32)), experiment=EXPERIMENT, workers=0
    )
    result = run_search(config, store["root"] / "search", tracking_uri=store["uri"], progress=False)
    update_pareto(EXPERIMENT, store["uri"])
    run = MlflowClient(store["uri"]).get_run(result.run_id)
    return {**store, "run_id": result.run_id, "run_name": run.info.run_name}


@pytest.fixture(scope="module")
def ui(server: dict, searched: dict) -> dict:
    """The running UI (waited for) and the addresses `amc ui` printed."""
    _wait_healthy(server["proc"], server["port"], server["log"])
    lines = server["log"].read_text().splitlines()
    urls = [line.split()[0] for line in lines if line.strip().startswith("http://")]
    return {"port": server["port"], "urls": urls, "log": server["log"]}


def _end_group(proc: subprocess.Popen) -> None:
    """Ends the `amc ui` process and the server it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_ui_prints_addresses(searched: dict, ui: dict) -> None:
    base = f"http://127.0.0.1:{ui['port']}/"
    assert ui["urls"][:2] == [base, f"{base}#/experiments/{searched['exp_id']}/runs"]
    # `amc ui` starts while the search runs, so it usually finds no Pareto front yet and says what to run
    pareto = ui_urls(ui["port"], searched["exp_id"])[2]
    assert 'tags.amc.pareto = "true"' in urllib.parse.unquote(pareto)
    log = ui["log"].read_text()
    assert ui["urls"][2:3] == [pareto] or (
        len(ui["urls"]) == 2 and f"no Pareto front yet in experiment {EXPERIMENT!r}: run `amc pareto" in log
    ), log


def test_browser_shows_run_metrics_and_pareto_filter(searched: dict, ui: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base, name = f"http://127.0.0.1:{ui['port']}/", searched["run_name"]
    with sync_playwright() as pw:
        # Playwright gives the browser a fresh temporary profile (it refuses --user-data-dir in args)
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(ui["urls"][1])  # the experiment's runs table
            page.get_by_text(name).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            page.goto(f"{base}#/experiments/{searched['exp_id']}/runs/{searched['run_id']}")
            page.get_by_text("best_top1").first.wait_for(timeout=PAGE_TIMEOUT_MS)
            body = page.inner_text("body")
            for metric in ("reward", "top1", "flops_ratio", "params_ratio", "best_test_top1"):
                assert metric in body, f"metric {metric} is not shown on the run page"
            page.goto(ui_urls(ui["port"], searched["exp_id"])[2])  # runs filtered to tags.amc.pareto = "true"
            page.get_by_text(name).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            page.get_by_text("1 matching run").first.wait_for(timeout=PAGE_TIMEOUT_MS)
            assert "pareto-front" not in page.inner_text("body"), "the Pareto run itself is not a search run"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            browser.close()


def test_browser_tests_run_wherever_chromium_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate of the tests above: chromium decides, not CI; under CI a missing chromium is a failure."""
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/chromium" if name == "chromium" else None)
    monkeypatch.delenv("CI", raising=False)
    assert _chromium() == "/usr/bin/chromium", "runs outside CI when chromium is installed"
    monkeypatch.setenv("CI", "true")
    assert _chromium() == "/usr/bin/chromium"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed.*apt-get install -y chromium"):
        _chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        _chromium()
