"""The first hour of a new user, as a walkthrough on a fresh clone found it: one search through the CLI, then
prune, export, pareto and ui on what it wrote. Real MLflow store, real model, the embedded digits data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from agents.records import SearchConfig, default_out_dir
from amc.cli import main
from amc.service.candidates import load_search_runs, mlflow_client
from amc.service.front import Candidate, pareto_front
from amc.service.pareto import update_pareto
from amc.service.plots import pareto_figure, policy_figure
from envs import EnvConfig

EXPERIMENT = "first-hour"
CONFIG = """experiment: first-hour
agent: random
episodes: 3
seed: 0
workers: 0
env:
  model: resnet20
  checkpoint: {checkpoint}
  target_ratio: 0.5
"""


def _run(args: list[str]) -> tuple[int, str, str]:
    """``amc ARGS`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def walked(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`amc search` run as the README says, from its own directory: no --out, a relative SQLite store."""
    root = tmp_path_factory.mktemp("first-hour")
    ckpt = trained_resnet20 / "model.pt"
    config = root / "c.yaml"
    config.write_text(CONFIG.format(checkpoint=ckpt))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        code, out, err = _run(["search", "--config", str(config), "--tracking-uri", "sqlite:///mlflow.db"])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    search = root / "runs" / "resnet20-digits-flops0.5-random-s0"
    summary = json.loads((search / "search.json").read_text())
    return {
        "root": root,
        "ckpt": ckpt,
        "out": out,
        "search": search,
        "summary": summary,
        "uri": f"sqlite:///{root}/mlflow.db",
    }


def test_search_prints_its_absolute_store_and_a_runnable_apply_command(walked: dict) -> None:
    out, search, root = walked["out"], walked["search"], walked["root"]
    assert search.is_dir(), "the default directory is named after model, data, target, agent and seed"
    assert f"in the store sqlite:///{root}/mlflow.db" in out, out
    assert f"browse it: amc ui --tracking-uri sqlite:///{root}/mlflow.db --experiment {EXPERIMENT}" in out
    policy = search / "best_policy.json"
    assert f"apply with: amc prune --checkpoint {walked['ckpt']} --policy {policy} --out <dir>" in out, out


def test_default_out_dir_names_what_is_searched() -> None:
    config = SearchConfig(env=EnvConfig(target_ratio=0.2), agent="tpe", seed=1)
    assert default_out_dir(config) == Path("runs/resnet20-digits-flops0.2-tpe-s1")
    config = SearchConfig(env=EnvConfig(model="torchvision:resnet18", targets=(0.2, 0.5)), agent="ddpg")
    assert default_out_dir(config) == Path("runs/torchvision_resnet18-digits-flops-targets0.2-0.5-ddpg-s0")


def _prune(policy: Path, out: Path) -> tuple[str, dict]:
    code, stdout, err = _run(["prune", "--policy", str(policy), "--finetune-epochs", "0", "--out", str(out)])
    assert code == 0, err
    assert "randomly initialised" not in err
    return stdout, json.loads((out / "report.json").read_text())


def test_prune_scores_a_searched_policy_as_the_search_did(walked: dict, tmp_path: Path) -> None:
    """One policy, one calibration, one number: no --checkpoint or --model, the same search-val top-1 exactly."""
    summary, ckpt = walked["summary"], walked["ckpt"]
    printed, report = _prune(walked["search"] / "best_policy.json", tmp_path / "best")
    assert printed.startswith(f"dense model: {ckpt} (the policy's, recorded in {walked['search'] / 'config.yaml'})")
    assert report["val_top1_before_finetune"] == summary["best"]["top1"]
    assert report["top1_before_finetune"] == summary["best"]["test_top1"]

    episode = next(e for e in summary["episodes"] if e["episode"] == 2)  # a random policy (episode 0 is uniform)
    run_id = summary["mlflow_run_id"]
    args = ["--experiment", EXPERIMENT, "--run-id", run_id, "--episode", "2", "--tracking-uri", walked["uri"]]
    code, stdout, err = _run(["export", *args, "--out", str(tmp_path / "ex")])
    assert code == 0, err
    policy = (tmp_path / "ex" / "policy.json").resolve()
    assert f"apply with: amc prune --checkpoint {ckpt} --policy {policy} --out <dir>" in stdout
    printed, report = _prune(policy, tmp_path / "ep2")
    assert f"recorded in {tmp_path / 'ex' / 'export.json'}" in printed
    assert report["val_top1_before_finetune"] == episode["top1"]


def test_prune_says_when_the_policys_dense_model_is_unknown_or_gone(walked: dict, tmp_path: Path) -> None:
    lone = tmp_path / "lone" / "policy.json"
    lone.parent.mkdir()
    shutil.copy(walked["search"] / "best_policy.json", lone)
    code, _, err = _run(["prune", "--policy", str(lone), "--out", str(tmp_path / "p")])
    assert code == 2 and err.count("\n") == 1, err
    assert "records no dense model" in err and "pass --checkpoint DENSE.pt, the resnet20 model" in err
    moved = tmp_path / "moved"
    shutil.copytree(walked["search"], moved, ignore=shutil.ignore_patterns("checkpoint"))
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace(str(walked["ckpt"]), str(tmp_path / "gone.pt")))
    code, _, err = _run(["prune", "--policy", str(moved / "best_policy.json"), "--out", str(tmp_path / "p")])
    assert (
        code == 2
        and err.count("\n") == 1
        and f"{tmp_path / 'gone.pt'} (recorded in {config}), which is not there" in err
    )
    assert not (tmp_path / "p").exists()


def test_run_metrics_place_each_run_at_its_best_policy(walked: dict) -> None:
    client = mlflow_client(walked["uri"])
    best, run_id = walked["summary"]["best"], walked["summary"]["mlflow_run_id"]
    metrics = client.get_run(run_id).data.metrics  # the latest value of each, what a chart shows
    assert metrics["best_top1"] == best["top1"]
    assert metrics["best_flops_ratio"] == best["flops_ratio"] and metrics["best_params_ratio"] == best["params_ratio"]
    history = client.get_metric_history(run_id, "best_flops_ratio")
    assert len(history) == len(walked["summary"]["episodes"]) + 1, "per episode (the best so far), and the returned one"


def test_pareto_says_where_every_row_is(walked: dict, tmp_path: Path) -> None:
    from amc.cli.results import _all_rows_hint, _print_front

    report = update_pareto(EXPERIMENT, walked["uri"], log_to_mlflow=False)
    assert _all_rows_hint(report, None) == "pass --out DIR to write all rows to DIR/pareto_front.csv"
    hint = _all_rows_hint(report, tmp_path)
    assert hint == f"all rows: {tmp_path / 'pareto_front.csv'}"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _print_front(report.front.front, report.front.objectives, hint, limit=1)
    assert buffer.getvalue().splitlines()[-1] == f"  ... {len(report.front.front) - 1} more ({hint})"


def test_min_top1_leaves_out_weak_policies(walked: dict, tmp_path: Path) -> None:
    top1 = sorted(e["top1"] for e in walked["summary"]["episodes"])
    floor = (top1[0] + top1[-1]) / 2
    common = ["--experiment", EXPERIMENT, "--tracking-uri", walked["uri"]]
    code, _, err = _run(["pareto", *common, "--no-tracking", "--min-top1", f"{floor}", "--out", str(tmp_path / "f")])
    assert code == 0, err
    rows = (tmp_path / "f" / "pareto_candidates.csv").read_text().splitlines()[1:]
    assert 0 < len(rows) < len(top1), "the weak policies are left out"
    assert json.loads((tmp_path / "f" / "pareto_front.json").read_text())["min_top1"] == floor, "and the file says so"
    code, _, err = _run(["pareto", *common, "--min-top1", "1", "--out", str(tmp_path / "none")])
    assert code == 2 and err.count("\n") == 1 and "lower --min-top1" in err and not (tmp_path / "none").exists()
    code, _, err = _run(["export", *common, "--pareto", "--min-top1", f"{floor}", "--out", str(tmp_path / "x")])
    assert code == 0, err
    assert json.loads((tmp_path / "x" / "policy.json").read_text())["measured"]["top1"] >= floor
    code, _, err = _run(["export", *common, "--run-id", "abc", "--min-top1", "0.5", "--out", str(tmp_path / "y")])
    assert code == 2 and "--min-top1 filters the Pareto front's policies; it needs --pareto" in err


def _candidate(episode: int, top1: float, flops: float) -> Candidate:
    return Candidate("r", "run", episode, top1, flops, flops, ratios={"conv1": 1 - flops})


def test_front_plot_zooms_on_the_useful_part() -> None:
    front = pareto_front([_candidate(0, 0.10, 0.05), _candidate(1, 0.90, 0.3), _candidate(2, 0.96, 0.5)])
    fig = pareto_figure(front)
    bottom, top = fig.axes[0].get_ylim()
    assert 10 < bottom < 90 and top > 96, "the policy at chance is below the view, the useful front in it"
    assert any("1 policy below" in t.get_text() for t in fig.axes[0].texts), "and the plot says so"


LABEL = (
    "resnet20-flops0.2-ddpg-s0-20261206-0153-a1b2c3 episode 12 (experiment 'digits-resnet20', run "
    "a1b2c3d4e5f60718293a4b5c6d7e8f90): top-1 96.67%, FLOPs 19.9%, params 23.7%"
)


@pytest.mark.parametrize("which", ["policy", "front"])
def test_plot_titles_fit_the_figure(which: str) -> None:
    import matplotlib.pyplot as plt

    if which == "policy":
        fig = policy_figure({f"layer{i}.conv1": 0.3 for i in range(12)}, 0.4, LABEL)
    else:
        fig = pareto_figure(pareto_front([_candidate(0, 0.9, 0.3), _candidate(1, 0.95, 0.5)]), "front: " + LABEL)
    title = fig.texts[0]
    extent = title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= extent.x0 and extent.x1 <= fig.bbox.width and extent.y1 <= fig.bbox.height, "not clipped"
    assert title.get_text().split() == (LABEL if which == "policy" else "front: " + LABEL).split(), "nothing cut"
    plt.close(fig)


@pytest.mark.parametrize(
    ("args", "flag"), [(["search", "--episdoes", "20"], "--episodes"), (["prune", "--polcy", "p.json"], "--policy")]
)
def test_a_mistyped_flag_gets_its_commands_usage_and_a_suggestion(args: list[str], flag: str) -> None:
    code, out, err = _run([*args, "--out", "x"])
    assert code == 2 and out == ""
    assert err.startswith(f"usage: amc {args[0]} "), err
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [f"amc {args[0]}: error: unrecognized arguments: {args[1]}; did you mean {flag}?"]


def test_run_of_pareto_front_is_found_for_ui(walked: dict) -> None:
    """`amc ui` prints the Pareto run's Artifacts page (the front plot) once `amc pareto` logged one."""
    from amc.service.pareto import find_pareto_run

    client = mlflow_client(walked["uri"])
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert find_pareto_run(client, exp_id) is None
    report = update_pareto(EXPERIMENT, walked["uri"])
    assert find_pareto_run(client, exp_id) == report.pareto_run_id
    assert len(load_search_runs(client, exp_id)) == 1, "the Pareto run is no search"


def _timed(name: str, ms: float, iqr: float) -> dict:
    return {"name": name, "latency_ms": ms, "latency_iqr_ms": iqr}


def test_demo_footnotes_an_unreliable_latency_column() -> None:
    from amc.cli.demo import latency_caveat

    dense = _timed("dense", 1.0, 0.02)
    apart = [_timed("uniform", 0.8, 0.02), _timed("searched (DDPG)", 0.85, 0.04)]
    assert latency_caveat(dense, apart, load=0.5, cores=2) is None
    overlapping = [_timed("uniform", 0.8, 0.02), _timed("searched (DDPG)", 1.05, 0.2)]
    note = latency_caveat(dense, overlapping, load=0.5, cores=2)
    assert note is not None and "searched (DDPG) overlaps the dense model's" in note and "uniform" not in note
    note = latency_caveat(dense, apart, load=4.2, cores=2)
    assert note is not None and "1-min load average of 4.2 on 2 cores" in note


def test_the_demo_does_not_count_its_own_load_as_other_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from amc.cli.demo import others_load

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    # as if this process had kept two cores busy for the last 10 s: one core of the load of 3 is other work
    assert others_load(time.monotonic() - 10, time.process_time() - 20) == pytest.approx(1.0, abs=0.1)
