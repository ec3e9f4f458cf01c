"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    small, model, example = namespace["small"], namespace["model"], namespace["example"]
    amc = namespace["amc"]
    assert amc.count_cost(small, example).flops < 0.4 * amc.count_cost(model, example).flops
    assert (tmp_path / "resnet18-half.json").is_file()


def test_readme_loading_example_runs(trained_resnet20: Path, tmp_path: Path, capsys) -> None:
    """The "Loading what the commands write" snippet, after the commands its comment names."""
    import shutil

    from amc.cli import main

    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "load_model" in b)
    shutil.copytree(trained_resnet20, tmp_path / "r20")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["prune", "--checkpoint", "r20/model.pt", "--uniform", "0.5", "--finetune-epochs", "0",
                     "--latency-batch", "1", "--out", "r20-u50"]) == 0  # fmt: skip
        assert main(["export", "--policy", "r20-u50/policy.json", "--checkpoint", "r20/model.pt",
                     "--format", "torch-pruning", "--out", "tp"]) == 0  # fmt: skip
        for fmt in ("amc", "nni"):
            assert main(["export", "--policy", "r20-u50/policy.json", "--format", fmt, "--out", f"ex-{fmt}"]) == 0
        capsys.readouterr()
        exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "True", "the torch-pruning export gives amc prune's architecture"
    assert lines[-1] == "True True", "the amc export applies to the same cost; NNI lists one entry per group"


def test_readme_own_model_search_runs(tmp_path: Path, capsys) -> None:
    """The "Searching your own model" example writes what `amc search` writes, with the budget met."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "workspace_for" in b)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("True") and "best_policy.json" in last and "search.json" in last
    summary = __import__("json").loads((tmp_path / "runs" / "my-cnn" / "search.json").read_text())
    assert summary["model"] == "my-cnn" and summary["data"] == "custom" and len(summary["episodes"]) == 8
    assert (tmp_path / "mlflow.db").is_file()
