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
