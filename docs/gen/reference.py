"""The CLI and config reference pages, generated from the argparse parsers and the config dataclasses.

Nothing here is pasted: ``amc --help`` and every ``amc <command> --help`` come from :func:`amc.cli.build_parser`
(and ``make demo``'s from :func:`amc.cli.demo.build_parser`); every config field, its type, its default and its
text come from :func:`dataclasses.fields` and the ``Attributes:`` section of the class docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
from collections.abc import Iterator
from typing import Any


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: one line, pipes escaped, reST roles and literals as Markdown code."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split()))
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    # a pipe ends a table cell, except inside a code span (where a backslash would show)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in re.split(r"(`[^`]*`)", text))


# --------------------------------------------------------------------------- the command line
def parsers() -> dict[str, argparse.ArgumentParser]:
    """``amc``, ``amc <command>`` for every subcommand (in ``amc --help``'s order), and ``make demo``'s parser."""
    from amc.cli import build_parser
    from amc.cli.demo import build_parser as demo_parser

    top = build_parser()
    out = {"amc": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({f"amc {name}": p for name, p in action.choices.items()})
    out["make demo"] = demo_parser()
    return out


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """(group title, action) of every option of ``parser``, ``--help`` and subcommand lists left out."""
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield group.title or "", action


def _argument(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    metavar = action.metavar or action.dest.upper()
    return " ".join(metavar) if isinstance(metavar, tuple) else str(metavar)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    return f"`{action.default}`"


def command_section(name: str, parser: argparse.ArgumentParser, level: int = 2) -> list[str]:
    """The reference of one command: its description, usage and a table of its options by group."""
    formatter = parser._get_formatter()
    lines = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        lines += [parser.description.strip(), ""]
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines += ["```text", usage, "```", ""]
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    if positionals:
        lines += ["| argument | help |", "| --- | --- |"]
        lines += [f"| `{a.metavar or a.dest}` | {_cell(formatter._expand_help(a))} |" for a in positionals]
        lines.append("")
    last_group = None
    for group, action in _options(parser):
        if group != last_group:
            if last_group is not None:
                lines.append("")
            if group not in ("options", "optional arguments"):
                lines += [f"*{group}*", ""]
            lines += ["| flag | argument | default | help |", "| --- | --- | --- | --- |"]
            last_group = group
        flags = ", ".join(f"`{s}`" for s in action.option_strings)
        arg = _argument(action)
        lines.append(
            f"| {flags} | {f'`{_cell(arg)}`' if arg else ''} | {_cell(_default(action))} | "
            f"{_cell(formatter._expand_help(action) if action.help else '')} |"
        )
    lines.append("")
    return lines


def cli_reference() -> str:
    """Markdown of every command: ``amc``, its subcommands, and ``make demo`` (``python -m amc.cli.demo``)."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal's width: one width for every build
    try:
        return _cli_reference()
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def _cli_reference() -> str:
    out: list[str] = []
    from amc.cli.commands import COMMANDS

    for name, parser in parsers().items():
        out += command_section(name, parser, 2 if name in ("amc", "make demo") else 3)
        if name == "amc":
            out += ["| command | what it does |", "| --- | --- |"]
            out += [f"| [`amc {c}`](#amc-{c}) | {_cell(h)} |" for c, (_, _, h) in COMMANDS.items()]
            out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the config dataclasses
def config_sections() -> list[tuple[str, type]]:
    """(YAML section, dataclass) of every typed config a search or sweep file holds, in file order.

    The sections are found by walking :class:`agents.records.SearchConfig`'s fields (a field whose default is a
    dataclass is a section), so a new section appears here without a change; a range of targets and the sweep
    file, which are not default sections, are added by name.
    """
    from agents.records import SearchConfig
    from agents.sweep import SweepConfig
    from envs.targets import TargetRange

    out: list[tuple[str, type]] = [("(top level)", SearchConfig)]

    def walk(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            if f.default_factory is dataclasses.MISSING:
                continue
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                out.append((f"{prefix}{f.name}", type(value)))
                walk(f"{prefix}{f.name}.", type(value))

    walk("", SearchConfig)
    return [*out, ("env.targets (a range)", TargetRange), ("sweep file", SweepConfig)]


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s Google-style docstring: field name -> its text (one line)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)+)", doc, flags=re.M)
    if not match:
        return {}
    out: dict[str, str] = {}
    name = None
    for line in match.group(1).splitlines():
        entry = re.match(r"^ {4}(\w+)(?: \(.*?\))?: ?(.*)$", line)
        if entry:
            name = entry.group(1)
            out[name] = entry.group(2)
        elif name and line.strip():
            out[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in out.items()}


def _field_default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value: Any = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            section = next((s for s, c in config_sections() if c is type(value)), None)
            anchor = re.sub(r"[^a-z0-9]", "", section.lower()) if section else ""
            where = f"[`{section}`](#{anchor})" if section else f"`{type(value).__name__}`"
            return f"its section's defaults: {where}"
    else:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def config_table(cls: type) -> list[str]:
    """One row per dataclass field: name, type, default, docstring text."""
    docs = attribute_docs(cls)
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"| `{f.name}` | {_cell(f'`{kind}`')} | {_field_default(f)} | {_cell(docs.get(f.name, ''))} |")
    return lines


def config_reference() -> str:
    """Markdown of every config section: its dataclass, its summary line and its fields."""
    out: list[str] = []
    for section, cls in config_sections():
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0]
        out += [f"## `{section}`", "", f"`{cls.__module__}.{cls.__qualname__}`: {_cell(summary)}", ""]
        out += config_table(cls)
        out.append("")
    return "\n".join(out)


def fields_table(dotted: str) -> str:
    """The field table of the dataclass ``module.Class`` (e.g. ``amc.policy.Policy``)."""
    import importlib

    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"gen:fields.{dotted} is not a dataclass")
    return "\n".join(config_table(cls))
