"""The documentation site: its code runs, its references are generated, and it holds everything the README says.

- Every Python block of the getting-started and tutorial pages runs as written (:func:`test_python_block_runs`).
- Every ``amc`` command of every page (and the README) parses with the real parsers; the tutorial commands of
  :data:`RUN` run end to end with tiny budgets, in the order the page gives them, before the page's Python block
  that reads their files. The others are run elsewhere: ``make demo`` by ``tests/test_demo.py``, ``make test``
  by CI, ``--resume`` by ``tests/test_search_cli.py``, ``--init-from`` by ``tests/test_warm_start.py``, latency
  budgets by ``tests/test_latency.py``, sweeps by ``tests/test_ray.py``, ``amc ui`` by
  ``tests/test_mlflow_ui.py``, ``--address`` by ``tests/test_cluster.py``, the compose file by
  ``tests/test_docker.py``; ``ray start`` and ``docker compose`` need a cluster or an engine.
- The CLI and config references list every flag and field; the results pages hold no pasted table.
- The strict site build (``make docs``) is a CI step, not a test: it takes ~20 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _gen_module(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_gen_{name}", DOCS / "gen" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.path.insert(0, str(DOCS / "gen"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(DOCS / "gen"))
    return module


hooks = _gen_module("hooks")
reference = hooks.reference
results = hooks.results


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "gen" not in p.relative_to(DOCS).parts)


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made: copied where a page's code runs, it saves each test the
    ~7 s of MLflow's schema migrations (the pages use ``sqlite:///mlflow.db`` in the working directory)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@contextmanager
def _cwd(path: Path, store: Path | None = None) -> Iterator[None]:
    if store is not None:
        shutil.copy(store, path / "mlflow.db")
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- commands
def _amc_lines(text: str) -> list[str]:
    """Each ``amc ...`` command line of ``text``'s bash blocks, comments and ``.venv/bin/`` dropped."""
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    out = []
    for line in lines:
        line = re.sub(r"\.venv/bin/amc", "amc", line.split(" #")[0].split("# ")[0]).strip()
        if line.startswith("amc "):
            out.append(line)
    return out


PLACEHOLDERS = {"HEAD_IP": "127.0.0.1", "MLFLOW_HOST": "127.0.0.1", "RUN_ID": "0123abcd", "DENSE.pt": "dense.pt"}


def _argv(line: str) -> list[str]:
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    return shlex.split(line)[1:]


@pytest.mark.parametrize("page", [README, *_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_amc_command_parses(page: Path) -> None:
    from amc.cli import build_parser

    parser = build_parser()
    for line in _amc_lines(page.read_text()):
        try:
            parser.parse_args(_argv(line))
        except SystemExit:
            pytest.fail(f"{page.name}: {line!r} does not parse")


def _tiny(argv: list[str], dense: Path | None = None) -> list[str]:
    """``argv`` with the budgets cut (argparse keeps an option's last value), and ``dense`` as the dense model of
    a search that names none (and of the cached-baseline path the pages use)."""
    argv = [str(dense) if "baselines/" in a else str(ROOT / a) if a.startswith("experiments/") else a for a in argv]
    command = argv[0]
    if command == "search":
        extra = ["--episodes", "3", "--workers", "0", "--set", "env.bn_batches=2"]
        return argv + extra + (["--set", f"env.checkpoint={dense}"] if dense is not None else [])
    if command == "train":
        return argv + ["--epochs", "1"]
    if command == "prune":
        return argv + ["--finetune-epochs", "0", "--latency-batch", "1"]
    return argv


RUN = {
    "tutorials/mlflow-ui.md": ("search --config", "pareto", "export", "prune"),
    "tutorials/prune-export.md": ("train", "prune", "export"),
}
"""Page -> the commands (prefixes) that run, in page order, before its Python blocks; the rest only parse."""


def _run_page_commands(page: str, dense: Path) -> list[str]:
    from amc.cli import main

    ran = []
    for line in _amc_lines((DOCS / page).read_text()):
        argv = _argv(line)
        if not any(" ".join(argv).startswith(prefix) for prefix in RUN[page]):
            continue
        if "--iterative" in argv or "--resume" in argv or "--agent" in argv or "--set" in argv:
            continue  # variations of a command that ran: they parse (above)
        assert main(_tiny(argv, dense)) == 0, line
        ran.append(line)
    return ran


@pytest.mark.slow
def test_first_tutorial_runs(
    trained_resnet20: Path, empty_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Search, front, export, prune: the commands of "Search the default, read it in MLflow", tiny budgets."""
    with _cwd(tmp_path, empty_store):
        ran = _run_page_commands("tutorials/mlflow-ui.md", trained_resnet20 / "model.pt")
    assert [line.split()[1] for line in ran] == ["search", "pareto", "export", "prune"]
    out = capsys.readouterr().out
    assert "Pareto front of experiment 'digits-resnet20'" in out and "manifest: runs/export/export.json" in out
    assert (tmp_path / "runs" / "exported" / "model.pt").is_file()


# --------------------------------------------------------------------------- Python blocks
PYTHON_PAGES = [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md"))]
PYTHON_BLOCKS = [(p, i) for p in PYTHON_PAGES for i, _ in enumerate(_blocks(p, "python"))]


def test_the_tutorials_have_python_blocks() -> None:
    names = {p.name for p, _ in PYTHON_BLOCKS}
    assert {"own-model.md", "prune-export.md", "your-data.md"} <= names


def _exec(page: Path, index: int, namespace: dict | None = None) -> dict:
    namespace = {"__name__": "docs"} if namespace is None else namespace
    exec(compile(_blocks(page, "python")[index], str(page), "exec"), namespace)
    return namespace


def test_engine_example_runs(tmp_path: Path) -> None:
    """own-model.md, first block: groups, cost, a policy file, the pruned copy, fine-tuning."""
    with _cwd(tmp_path):
        ns = _exec(DOCS / "tutorials" / "own-model.md", 0)
    small, model, example, amc = ns["small"], ns["model"], ns["example"], ns["amc"]
    assert amc.count_cost(small, example).flops < 0.4 * amc.count_cost(model, example).flops
    assert (tmp_path / "resnet18-half.json").is_file()


def test_own_model_search_runs(empty_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """own-model.md, second block: writes what `amc search` writes, with the budget met."""
    with _cwd(tmp_path, empty_store):
        _exec(DOCS / "tutorials" / "own-model.md", 1)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("True") and "best_policy.json" in last and "search.json" in last
    summary = json.loads((tmp_path / "runs" / "my-cnn" / "search.json").read_text())
    assert summary["model"] == "my-cnn" and summary["data"] == "custom" and len(summary["episodes"]) == 8
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.slow
def test_prune_export_tutorial_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prune-export.md: train, prune, the three exports (tiny budgets), then the loading block."""
    with _cwd(tmp_path):
        ran = _run_page_commands("tutorials/prune-export.md", tmp_path / "r20" / "model.pt")
        assert [line.split()[1] for line in ran] == ["train", "prune", "export", "export", "export"]
        capsys.readouterr()
        _exec(DOCS / "tutorials" / "prune-export.md", 0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "True", "the torch-pruning export gives amc prune's architecture"
    assert lines[-1] == "True True", "the amc export applies to the same cost; NNI lists one entry per group"


@pytest.mark.slow
def test_imagefolder_tutorial_runs(empty_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """your-data.md: the tiny ImageFolder, a dense model trained on it (one epoch), and a search of it."""
    from amc.cli import main

    with _cwd(tmp_path, empty_store):
        _exec(DOCS / "tutorials" / "your-data.md", 0)
        train, search = [
            line for line in _amc_lines((DOCS / "tutorials" / "your-data.md").read_text()) if "tiny" in line
        ]
        assert main(_tiny(_argv(train))) == 0
        assert main(_tiny(_argv(search))) == 0  # the page's own env.checkpoint: the model just trained
    assert len(list((tmp_path / "data" / "tiny" / "train" / "cat").glob("*.png"))) == 24
    assert json.loads((tmp_path / "runs" / "tiny-dense" / "report.json").read_text())["top1"] >= 0
    summary = json.loads((tmp_path / "runs" / "tiny-search" / "search.json").read_text())
    assert summary["data"] == "imagefolder" and len(summary["episodes"]) == 3


def test_every_python_block_is_run_by_a_test() -> None:
    run = {("own-model.md", 0), ("own-model.md", 1), ("prune-export.md", 0), ("your-data.md", 0)}
    assert {(p.name, i) for p, i in PYTHON_BLOCKS} == run, "a new Python block needs a test here"


# --------------------------------------------------------------------------- generated references
def test_cli_reference_lists_every_flag_of_every_command() -> None:
    text = reference.cli_reference()
    sections = dict(re.findall(r"^#+ `([^`]+)`\n(.*?)(?=^#+ `|\Z)", text, flags=re.S | re.M))
    for name, parser in reference.parsers().items():
        assert name in sections, f"the CLI reference has no section for {name}"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in sections[name], f"{name} {flag} is missing from the CLI reference"
            if action.help and action.option_strings and not isinstance(action, argparse._HelpAction):
                first = action.help.split("%")[0].split()[:3]
                assert " ".join(first) in " ".join(sections[name].split()), f"{name}: help of {action.option_strings}"


def test_cli_reference_would_catch_a_missing_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    real = reference.parsers

    def with_new_flag() -> dict:
        out = real()
        out["amc search"].add_argument("--brand-new-flag", help="a flag added after the docs were written")
        return out

    monkeypatch.setattr(reference, "parsers", with_new_flag)
    assert "`--brand-new-flag`" in reference.cli_reference(), "the reference is generated, so new flags appear"


def test_config_reference_documents_every_field() -> None:
    import dataclasses

    text = reference.config_reference()
    for section, cls in reference.config_sections():
        docs = reference.attribute_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} ({section}) has no text in its docstring's Attributes"
            assert f"| `{f.name}` |" in text, f"{section}.{f.name} is missing from the config reference"


# --------------------------------------------------------------------------- results
def test_every_generated_section_expands() -> None:
    used = set()
    for page in _pages():
        for name in hooks.MARK.findall(page.read_text()):
            assert hooks.generate(name).strip(), f"{page.name}: gen:{name} is empty"
            used.add(name)
    unused = {f"results.{n}" for n in results.TABLES} - used
    assert not unused, f"results tables no page shows: {sorted(unused)}"
    with pytest.raises(KeyError):
        hooks.generate("results.no_such_table")


def test_results_pages_paste_no_table() -> None:
    """Every figure table of a results page is generated from the JSON files (index.md lists scripts only)."""
    for page in sorted((DOCS / "results").glob("*.md")):
        if page.name == "index.md":
            continue
        pasted = [line for line in page.read_text().splitlines() if line.startswith("|")]
        assert not pasted, f"{page.name} has a pasted table: {pasted[0]}"


def test_results_tables_read_the_json_and_name_their_source() -> None:
    data = json.loads((results.RESULTS / "search_quality.json").read_text())
    tpe = data["models"]["resnet20"]["flops_0.2"]["tpe"]["test_top1_mean"]
    table = results.table("methods.resnet20")
    assert f"**{100 * tpe:.2f}**" in table
    assert "Source: `experiments/bench/results/search_quality.json`" in table
    for name in results.TABLES:
        assert re.search(r"\(.*; (\d{4}-\d\d-\d\d|not committed yet)\)", results.table(name)), name


# --------------------------------------------------------------------------- the README as a front page
def _site_text() -> str:
    return "\n".join(hooks.expand(p.read_text()) for p in _pages())


def test_readme_is_a_front_page() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_everything_in_the_readme_is_on_the_site() -> None:
    """Every figure and every command of the README is also on the site."""
    readme, site = README.read_text(), _site_text()
    flat = " ".join(site.split())
    for figure in sorted(set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?%|\d+\.\d+x?", readme))):
        assert figure in flat, f"the README's {figure} is not on the site"
    for line in _amc_lines(readme):
        assert line in flat, f"the README's command {line!r} is not on the site"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


def test_no_page_is_left_out_of_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in _pages():
        rel = page.relative_to(DOCS).as_posix()
        assert rel in nav, f"{rel} is not in mkdocs.yml's nav"


# --------------------------------------------------------------------------- the build
def test_ci_builds_the_site_strictly_between_lint_and_tests() -> None:
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert steps == ["make lint", "make docs", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: .*\n\t.*mkdocs build --strict", makefile, flags=re.M), "make docs builds strictly"
    config = (ROOT / "mkdocs.yml").read_text()
    assert "font: false" in config, "the build must not fetch fonts (no network)"


def test_docs_dependencies_are_pinned_in_the_lock() -> None:
    lock = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    lock = {re.sub(r"[-_.]+", "-", k.lower()): v for k, v in lock.items()}
    dev = re.search(r"^dev = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), flags=re.S | re.M).group(1)
    pins = dict(re.findall(r'"(mkdocs[\w-]*)==([\w.]+)"', dev))
    assert set(pins) == {"mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python"}
    for name, version in pins.items():
        assert lock.get(name) == version, f"{name}=={version} is not in constraints.txt"
