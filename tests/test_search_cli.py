"""`amc search` as a user runs it: Ctrl-C in the middle of a search, then `amc search --resume DIR --episodes N`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.search import SearchConfig, save_yaml
from amc.cli import main
from envs import EnvConfig

pytestmark = pytest.mark.slow
# the `amc` entry point, run by this interpreter
AMC = [sys.executable, "-c", "import sys; from amc.cli import main; sys.exit(main())"]
EPISODES, MORE = 60, 62  # enough that an idle machine cannot finish before the Ctrl-C lands (21 episodes/s)
START_S = 180  # imports and the first checkpoint take ~10 s on 2 idle cores


def _latest_episode(out: Path) -> int | None:
    latest = out / "checkpoint" / "LATEST"
    if not latest.is_file():
        return None
    return int(json.loads((out / "checkpoint" / latest.read_text().strip() / "state.json").read_text())["episode"])


def _terminal_signals() -> None:
    """In the child before exec: SIGINT as a terminal gives it (default action, not blocked), whatever this test
    process inherited or set (a signal ignored or blocked here would be ignored or blocked in the child too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state(pid: int) -> str:
    """The child's ignored and blocked signal masks, as /proc shows them (for a failure's message)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return ", ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_ctrl_c_kills_the_run_and_the_search_resumes_with_more_episodes(trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    env = EnvConfig(
        model="resnet20", checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.5, eval_batches=1, bn_batches=1
    )
    save_yaml(
        SearchConfig(
            env=env,
            agent="random",
            episodes=EPISODES,
            seed=2,
            checkpoint_every=2,
            experiment="test-search-cli",
            workers=0,
        ),
        tmp_path / "config.yaml",
    )
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "search"
    proc = subprocess.Popen(
        [*AMC, "search", "--config", str(tmp_path / "config.yaml"), "--out", str(out), "--tracking-uri", uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_terminal_signals,
    )
    try:
        deadline = time.monotonic() + START_S
        while _latest_episode(out) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"amc search ended before the test could interrupt it:\n{proc.communicate()[1]}"
        assert _latest_episode(out) is not None, f"no checkpoint within {START_S} s"
        signals = _signal_state(proc.pid)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"exit code {proc.returncode} after Ctrl-C ({signals}):\n{stderr[-3000:]}"
    assert "interrupted" in stderr
    done = _latest_episode(out)
    assert done is not None and done < EPISODES and not (out / "search.json").exists(), "stopped mid-search"
    state = json.loads(next((out / "checkpoint").glob("ep-*/state.json")).read_text())
    client = MlflowClient(uri)
    assert client.get_run(state["run_id"]).info.status == "KILLED"

    # the interrupted search resumes from the command line, with a larger episode budget
    assert main(["search", "--resume", str(out), "--episodes", str(MORE), "--tracking-uri", uri]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert [e["episode"] for e in summary["episodes"]] == list(range(MORE)), "nothing duplicated, nothing missing"
    assert SearchConfig.from_yaml(out / "config.yaml").episodes == MORE
    assert all(e["flops_ratio"] <= 0.5 for e in summary["episodes"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED", "the resumed run ends FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(state["run_id"], "reward"))
    assert steps == list(range(MORE)), "each episode logged to MLflow once"
    assert len(client.search_runs([run.info.experiment_id])) == 1, "the resume continued the run, no new one"


def test_ray_search_stderr_holds_only_the_projects_lines(trained_resnet20: Path, tmp_path: Path) -> None:
    """A 2-worker search on a new SQLite store: no Ray or MLflow log lines reach the user, only progress."""
    env = EnvConfig(model="resnet20", checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.5,
                    eval_batches=1, bn_batches=2)  # fmt: skip
    config = tmp_path / "c.yaml"
    save_yaml(SearchConfig(env=env, agent="random", episodes=4, workers=2, threads=1), config)
    proc = subprocess.run(
        [*AMC, "search", "--config", str(config), "--out", str(tmp_path / "s"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("search random:") for line in lines), proc.stderr[-3000:]
