"""CLI smoke tests for each engine command, and bad-input tests (one-line message, exit code 2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amc.baseline import train_baseline
from amc.checkpoint import load_model
from amc.cli import main
from amc.cost import count_cost
from amc.data import DataConfig
from amc.models import model_names
from amc.train import TrainConfig


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amc.cli", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("train", "prune", "sensitivity"):
        assert name in out.stdout
    for name in ("train", "prune", "sensitivity"):
        assert "--out" in run_cli(name, "--help").stdout


def test_train_command(tmp_path: Path) -> None:
    assert main(["train", "--model", "vgg_small", "--data", "digits", "--epochs", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"top1", "flops", "params"} <= set(report)
    assert report["top1"] > 0.2  # one epoch is well above chance (0.1) on digits
    assert load_model(tmp_path / "model.pt").spec.name == "vgg_small"


def test_prune_uniform_report_matches_saved_model(
    trained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--model",
            "resnet20",
            "--data",
            "digits",
            "--checkpoint",
            str(trained_resnet20 / "model.pt"),
            "--uniform",
            "0.5",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for key in (
        "top1_before_finetune",
        "top1",
        "flops",
        "flops_ratio",
        "params",
        "params_ratio",
        "latency_ms",
        "dense_latency_ms",
    ):
        assert key in report
    # latency: measured for the pruned and the dense model alike (values only, never compared as timings)
    for key in ("latency_ms", "dense_latency_ms", "latency_ratio"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, (key, report[key])
    assert report["latency_ratio"] == pytest.approx(report["latency_ms"] / report["dense_latency_ms"])
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("latency (ms)"))
    assert f"{report['dense_latency_ms']:.3f}" in row and f"{report['latency_ms']:.3f}" in row, row
    saved = load_model(out / "model.pt")
    recount = count_cost(saved.model, saved.spec.example_inputs())
    assert recount.flops == report["flops"]
    assert report["flops_ratio"] == pytest.approx(recount.flops / report["dense_flops"])
    assert report["params"] == recount.params
    assert report["top1"] >= 0.9
    # the written policy applies again through --policy
    again = tmp_path / "again"
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                str(trained_resnet20 / "model.pt"),
                "--policy",
                str(out / "policy.json"),
                "--finetune-epochs",
                "0",
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert json.loads((again / "report.json").read_text())["flops"] == report["flops"]


def test_prune_without_checkpoint_warns(tmp_path: Path) -> None:
    out = run_cli("prune", "--model", "plain20", "--uniform", "0.3", "--finetune-epochs", "0", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "randomly initialised" in out.stderr


def test_sensitivity_command(trained_resnet20: Path, tmp_path: Path) -> None:
    code = main(
        [
            "sensitivity",
            "--checkpoint",
            str(trained_resnet20 / "model.pt"),
            "--ratios",
            "0.2,0.8",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    lines = (tmp_path / "sensitivity.csv").read_text().strip().splitlines()
    assert lines[0] == "group,ratio,top1" and len(lines) == 1 + 12 * 2
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    by = {(r.split(",")[0], r.split(",")[1]): float(r.split(",")[2]) for r in lines[1:]}
    assert by[("conv1", "0.20")] >= by[("conv1", "0.80")] - 0.05  # pruning more rarely helps


def test_sensitivity_with_a_gradient_criterion(tmp_path: Path) -> None:
    """taylor, a choice of every --criterion, reads the gradients of one training batch in sensitivity too."""
    train_baseline("resnet20", DataConfig("digits"), TrainConfig(epochs=0), tmp_path / "dense", progress=False)
    args = ["sensitivity", "--checkpoint", str(tmp_path / "dense" / "model.pt"), "--ratios", "0.5"]
    assert main([*args, "--criterion", "taylor", "--out", str(tmp_path / "s")]) == 0
    lines = (tmp_path / "s" / "sensitivity.csv").read_text().strip().splitlines()
    assert lines[0] == "group,ratio,top1" and len(lines) == 1 + 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet21", "--out", "X"], "unknown model 'resnet21'"),
        (["train", "--model", "resnet20", "--data", "mnist", "--out", "X"], "unknown data set 'mnist'"),
        (["train", "--model", "resnet20", "--data", "cifar10", "--out", "X"], "needs a directory: pass --data-dir"),
        (
            ["train", "--model", "resnet20", "--data", "cifar10", "--data-dir", "/nonexistent", "--out", "X"],
            "is not a directory",
        ),
        (["train", "--model", "resnet20", "--epochs", "-1", "--out", "X"], "epochs must be >= 0"),
        (["train", "--model", "resnet20", "--device", "cuda", "--out", "X"], None),
        (["prune", "--model", "resnet20", "--uniform", "1.5", "--out", "X"], "fraction of channels removed"),
        (["prune", "--model", "resnet20", "--policy", "missing.json", "--out", "X"], "does not exist"),
        (
            ["prune", "--model", "resnet20", "--checkpoint", "missing.pt", "--uniform", "0.5", "--out", "X"],
            "does not exist",
        ),
        (["prune", "--model", "resnet20", "--out", "X"], "one of the arguments --policy --uniform is required"),
        (
            ["prune", "--model", "resnet20", "--uniform", "0.5", "--criterion", "magic", "--out", "X"],
            "argument --criterion: invalid choice: 'magic'",
        ),
        (["sensitivity", "--checkpoint", "missing.pt", "--out", "X"], "does not exist"),
        (
            ["prune", "--model", "resnet20", "--uniform", "0.5", "--rewind-weights", "--out", "X"],
            "--rewind-weights needs the dense model's --checkpoint",
        ),
        (
            ["prune", "--model", "resnet20", "--uniform", "0.5", "--rewind-weights", "--from-scratch", "--out", "X"],
            "not allowed with argument",
        ),
        (["prune", "--model", "resnet20", "--uniform", "0.5", "--distill-weight", "2", "--out", "X"], "in [0, 1]"),
        (["train", "--model", "resnet20", "--epochs", "2", "--keep-epoch", "2", "--out", "X"], "--keep-epoch 2"),
        (["quantize", "missing.pt", "--out", "X"], "does not exist"),
        (["sensitivity", "--model", "resnet20", "--checkpoint", "x.pt", "--ratios", "0.5,2", "--out", "X"], "--ratios"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a if a != "X" else str(tmp_path / "out") for a in args]
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid")
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.strip().splitlines() if "error" in line]
    assert len(errors) == 1, stderr
    if message:
        assert message in errors[0]
    assert not (tmp_path / "out").exists(), "nothing is written on bad input"


def test_bad_input_in_a_real_process() -> None:
    out = run_cli("train", "--model", "resnet21", "--out", "/tmp/never-written")
    assert out.returncode == 2
    assert (
        out.stderr.strip() == f"amc train: error: unknown model 'resnet21'; choose one of: {', '.join(model_names())}"
    )


def test_mismatched_policy_is_rejected_by_cli(trained_resnet20: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "prune",
                "--model",
                "vgg_small",
                "--uniform",
                "0.2",
                "--finetune-epochs",
                "0",
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 0
    )
    out = run_cli(
        "prune",
        "--checkpoint",
        str(trained_resnet20 / "model.pt"),
        "--policy",
        str(tmp_path / "v" / "policy.json"),
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 2 and "made for model 'vgg_small'" in out.stderr


@pytest.mark.parametrize(
    ("args", "yaml_text", "message"),
    [
        (["search", "--config", "C"], "episodes: 5\nbogus: 1\n", "unknown key 'bogus'"),
        (["search", "--config", "C"], "env: {target_ratio: 1.5}\n", "target_ratio 1.5 must be in (0, 1]"),
        (["search", "--config", "C"], "agent: ppo\n", "unknown agent 'ppo'"),
        (["search", "--config", "C"], "env: {min_ratio: 0.5, max_ratio: 0.2}\n", "min_ratio <= max_ratio"),
        (["search", "--config", "C", "--episodes", "0"], "episodes: 5\n", "episodes must be >= 1"),
        (["search", "--config", "missing.yaml"], None, "does not exist"),
        (["search", "--resume", "R"], None, "no search to resume"),
        (["search", "--resume", "R", "--init-from", "R"], None, "drop one"),
        (["search", "--config", "C", "--init-from", "R", "--agent", "tpe"], "episodes: 5\n", "set agent: ddpg"),
        (["search"], None, "pass --config"),
        (["sweep", "--config", "C"], "base: x.yaml\ngrid: {}\n", "non-empty grid"),
    ],
)
def test_search_bad_input(
    args: list[str], yaml_text: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
    args = [str(config) if a == "C" else str(tmp_path / "r") if a == "R" else a for a in args]
    assert (
        main([*args, "--out", str(tmp_path / "out")] if args[0] == "search" and "--resume" not in args else args) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_prune_stderr_holds_only_the_projects_own_lines(trained_resnet20: Path, tmp_path: Path) -> None:
    """No library noise (torch's CUDA_HOME warning on CPU machines, Python warnings) reaches the user."""
    proc = subprocess.run(
        [sys.executable, "-m", "amc.cli", "prune", "--checkpoint", str(trained_resnet20 / "model.pt"),
         "--uniform", "0.5", "--finetune-epochs", "0", "--latency-batch", "1", "--out", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
