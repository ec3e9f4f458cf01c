"""The registry of ``amc`` subcommands: each command module declares its flags and its run function here."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}
"""Command name -> (adds its flags, runs it, help text), in the order the commands were declared."""


def command(name: str, help_text: str) -> Callable:
    """Registers a subcommand: the decorated function adds its flags, ``run`` executes it."""

    def deco(add_args: Callable[[argparse.ArgumentParser], None]) -> Callable:
        def with_run(run: Command) -> Command:
            COMMANDS[name] = (add_args, run, help_text)
            return run

        add_args.run = with_run  # type: ignore[attr-defined]
        return add_args

    return deco
