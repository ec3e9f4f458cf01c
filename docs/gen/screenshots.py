"""Regenerates the MLflow UI screenshots of the first tutorial (``docs/img/mlflow-*.png``).

Runs the tutorial's commands with a small budget in a temporary directory (a 20-episode search of the embedded
default, its Pareto front), starts ``amc ui`` on that store, and saves two views with headless Chromium driven by
Playwright (Debian's ``chromium``, as ``tests/test_mlflow_ui.py`` uses it)::

    python docs/gen/screenshots.py            # about a minute on 2 cores once the dense baseline is cached

Not part of ``make docs``: the images are committed, and the site build needs no browser.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
CONFIG = ROOT / "experiments" / "configs" / "digits-resnet20-flops50.yaml"
FRONT = "#/experiments/1/runs?searchFilter=tags.amc.pareto%20%3D%20%22true%22&compareRunsMode=CHART"


def _amc(args: list[str], cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "amc.cli", *args], cwd=cwd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the MLflow UI did not answer at {url} within {seconds:.0f} s")


def _shoot(port: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.test_mlflow_ui import CHROMIUM_FLAGS  # the flags the UI test starts Chromium with

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (make browser)")
    with sync_playwright() as p:  # Playwright gives the browser a fresh profile of its own
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        for name, fragment in (("mlflow-runs.png", "#/experiments/1/runs"), ("mlflow-pareto-chart.png", FRONT)):
            page.goto(f"http://127.0.0.1:{port}/{fragment}", timeout=60_000)
            page.wait_for_timeout(8000)
            page.screenshot(path=str(out / name))
            print(f"wrote {out / name}")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5097, help="port of the temporary MLflow UI (default: 5097)")
    parser.add_argument("--out", type=Path, default=IMG, help="where the PNG files go (default: docs/img)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _amc(["search", "--config", str(CONFIG), "--episodes", "20", "--workers", "0", "--out", "runs/s50"], work)
        _amc(["pareto", "--experiment", "digits-resnet20", "--out", "runs/front"], work)
        ui = subprocess.Popen(
            [sys.executable, "-m", "amc.cli", "ui", "--experiment", "digits-resnet20", "--port", str(args.port)],
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        try:
            _wait(f"http://127.0.0.1:{args.port}/health", 150)
            _shoot(args.port, args.out)
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
