"""What each entry point imports: the CLI's ``--help`` and ``import amc`` stay light; the import graph is acyclic."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "ray", "stable_baselines3")
SERVICES = ("mlflow", "ray", "stable_baselines3", "onnxruntime")


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Runs ``code`` in a fresh interpreter; returns which of ``modules`` it left in ``sys.modules``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["export", "--help"]])
def test_cli_help_imports_no_heavy_package(argv: list[str]) -> None:
    code = f"import sys\nfrom amc.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded_after(code, HEAVY) == []


def test_python_m_amc_cli_help_imports_no_heavy_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "amc.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "search" in proc.stdout and "pareto" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


def test_engine_api_imports_no_service() -> None:
    code = "import amc\nfor name in amc.__all__:\n    getattr(amc, name)"
    assert _loaded_after(code, SERVICES) == []


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (lazy imports included)."""
    files = {}
    for package in ("amc", "envs", "agents"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = {t for t in targets if t in files and t != module and not module.startswith(t + ".")}
    return graph


def test_import_graph_is_acyclic() -> None:
    graph, done, path = _project_imports(), set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_engine_and_services_do_not_import_the_search() -> None:
    """Imports point one way (agents -> envs -> amc); only the command line (amc.cli) sits above the search."""
    graph = _project_imports()
    upward = {
        module: sorted(t for t in targets if t.split(".")[0] in ("agents", "envs"))
        for module, targets in graph.items()
        if module.split(".")[0] == "amc" and not module.startswith("amc.cli")
    }
    assert {m: t for m, t in upward.items() if t} == {}
    assert not any(t.startswith("agents") for m, targets in graph.items() if m.startswith("envs") for t in targets)
