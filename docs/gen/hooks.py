"""MkDocs hooks: generated sections of the pages (``mkdocs.yml``'s ``hooks``).

A page marks a generated section with an HTML comment on a line of its own: ``<!-- gen:cli -->`` (the command
line reference, from the argparse parsers), ``<!-- gen:config -->`` (the config dataclasses) or
``<!-- gen:results.NAME -->`` (a results table from ``experiments/bench/results/*.json``) or
``<!-- gen:fields.MODULE.CLASS -->`` (a dataclass's fields, e.g. the policy file's). An unknown name stops the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import reference  # noqa: E402
import results  # noqa: E402

MARK = re.compile(r"^<!-- gen:([\w.]+) -->$", flags=re.M)


def generate(name: str) -> str:
    """The Markdown of one generated section."""
    if name == "cli":
        return reference.cli_reference()
    if name == "config":
        return reference.config_reference()
    if name.startswith("results.") and name[8:] in results.TABLES:
        return results.table(name[8:])
    if name == "results_files":
        return results.files_table(_shown())
    if name.startswith("fields."):
        return reference.fields_table(name[7:])
    raise KeyError(
        f"unknown generated section gen:{name}; known: cli, config, fields.MODULE.CLASS, results.<{', '.join(results.TABLES)}>"
    )


def _shown() -> dict[str, list[str]]:
    """Results table name -> the results pages (``docs/results/*.md``) that show it."""
    out: dict[str, list[str]] = {}
    for page in sorted((HERE.parent / "results").glob("*.md")):
        for name in MARK.findall(page.read_text()):
            if name.startswith("results."):
                out.setdefault(name[8:], []).append(page.name)
    return out


def expand(markdown: str) -> str:
    """``markdown`` with every ``<!-- gen:NAME -->`` line replaced by its section."""
    return MARK.sub(lambda m: generate(m.group(1)), markdown)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return expand(markdown)


def on_files(files: Any, config: Any) -> Any:
    """The benchmark plots of ``experiments/bench/results/`` as ``assets/<name>.png`` (read where they are)."""
    from mkdocs.structure.files import File

    for png in sorted(results.RESULTS.glob("*.png")):
        files.append(File.generated(config, f"assets/{png.name}", abs_src_path=str(png)))
    return files
