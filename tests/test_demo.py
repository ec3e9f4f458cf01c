"""`make demo` end to end with a tiny budget: three methods in the same harness, fine-tuned, latency with spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amc.cli.demo import METHODS, main

pytestmark = pytest.mark.slow


def test_demo_compares_methods_and_writes_demo_json(
    trained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    code = main(
        ["--checkpoint", str(trained_resnet20 / "model.pt"), "--episodes", "4", "--finetune-epochs", "1",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    summary = json.loads((out / "demo.json").read_text())
    assert summary["target"] == {"metric": "flops", "ratio": 0.2}
    assert set(summary["methods"]) == {"uniform", "global", "ddpg"}
    for agent, row in summary["methods"].items():
        assert row["flops_ratio"] <= 0.2 + 1e-9, f"{agent} meets the budget"
        assert row["val_top1"] >= row["val_top1_before_finetune"], "fine-tuning keeps its best search-val epoch"
        assert row["latency_ms"] > 0 and row["latency_iqr_ms"] >= 0 and row["latency_blocks"] >= 1
        assert (out / agent / "model.pt").is_file() and (out / agent / "best_policy.json").is_file()
        assert row["name"] in printed
        assert summary["mlflow_run_ids"][agent]
    assert summary["dense"]["top1"] > 0.9 and " ± " in printed
    assert "latency_caveat" in summary and (
        summary["latency_caveat"] is None or f"* {summary['latency_caveat']}" in printed
    )
    for _, label in METHODS:
        assert f"fine-tune {label}: " in captured.err, "each fine-tuning's progress says which method it is"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert names == {"Default", "demo-digits-resnet20"}, "its own experiment, apart from the README searches'"
    assert f" ui --tracking-uri {uri} --experiment demo-digits-resnet20" in printed, "a command that finds the runs"


def test_demo_refuses_a_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--target-ratio", "1.5", "--out", str(tmp_path / "demo")])  # checked by the env's config
    assert code == 2 and "(0, 1]" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_demo_bad_checkpoint_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.pt does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()
