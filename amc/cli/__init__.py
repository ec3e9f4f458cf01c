"""The ``amc`` command line: one parser, one module per command group.

- :mod:`amc.cli.engine`: ``train``, ``prune``, ``sensitivity`` (the pruning / fine-tune engine);
- :mod:`amc.cli.search`: ``search``, ``sweep`` (the RL search in ``agents/``, imported inside the commands);
- :mod:`amc.cli.results`: ``pareto``, ``export``, ``ui`` (the service parts in :mod:`amc.service`).

Importing this package builds only argparse code: torch, MLflow, Ray and SB3 are imported by the command
that runs. Bad input exits with code 2 and a one-line message that says what to fix.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import warnings
from collections.abc import Sequence

# each module declares its commands in COMMANDS; this order is the order of `amc --help`
from amc.cli import engine, results, search  # noqa: F401
from amc.cli.commands import COMMANDS
from amc.errors import AmcError

log = logging.getLogger("amc")
COMPUTE_COMMANDS = ("train", "prune", "quantize", "sensitivity", "check", "search", "sweep")
"""Commands that train, prune or evaluate: they take the CPUs other work leaves free (:mod:`amc.threads`)."""


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it reports a flag it does not know itself, with its own usage and the closest flag.

    argparse would otherwise hand unknown flags up to ``amc``'s parser, which prints the top-level usage.
    """

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # before parsing: a mistyped flag would otherwise surface as "--policy is required" or the like
        flags = list(args or [])
        flags = flags[: flags.index("--")] if "--" in flags else flags
        unknown = [a for a in flags if a.startswith("--") and not self._known(a.split("=", 1)[0])]
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}{self._suggestion(unknown)}")
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        return parsed, extras

    def _flags(self) -> list[str]:
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]

    def _known(self, flag: str) -> bool:
        """Whether ``flag`` is one of this command's flags, or a prefix of one (argparse's abbreviations)."""
        return any(o.startswith(flag) for o in self._flags())

    def _suggestion(self, extras: Sequence[str]) -> str:
        """``; did you mean --x?`` for the first unknown flag close to one of this command's flags."""
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], self._flags(), n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amc", description="AMC-style search for per-layer pruning ratios, and the pruning / fine-tune engine."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser)
    for name, (add_args, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    warnings.formatwarning = lambda msg, cat, *a, **k: f"amc: warning: {msg}\n"
    if args.command in COMPUTE_COMMANDS:
        from amc.threads import choose_threads

        note = choose_threads()
        if note:
            log.info(note)
    try:
        return COMMANDS[args.command][1](args)
    except AmcError as exc:
        print(f"amc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amc: interrupted", file=sys.stderr)
        return 130


__all__ = ["SubcommandParser", "build_parser", "main"]
