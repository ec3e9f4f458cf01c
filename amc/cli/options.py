"""Flags that several ``amc`` commands share: one spelling, one type and one help text per idea.

Only argparse code: the names that registries hold (criteria, agents) are kept here as literals so that
building the parser imports no torch; tests compare them with the registries.
"""

from __future__ import annotations

import argparse
import re

CRITERION_NAMES = ("apoz", "bn_scale", "l1", "l2", "taylor")
"""``amc.pruning.CRITERIA.names()``, the choices of every ``--criterion`` (a test compares the two)."""
DEFAULT_CRITERION = "l2"
"""``amc.pruning.DEFAULT_CRITERION`` (a test compares the two)."""
LATENCY_BACKEND_NAMES = ("torch", "onnxruntime", "onnxruntime-int8")
"""``amc.cost.LATENCY_BACKENDS``, the choices of ``--latency-backend`` (a test compares the two)."""

TRACKING_URI_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)"
DEVICE_HELP = "torch device: cpu, cuda or cuda:N (default: cpu)"


def integer(text: str, minimum: int, maximum: int = 2**63 - 1) -> int:
    """``text`` as an integer in [minimum, maximum] (argparse's message otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"expected an integer in [{minimum}, {maximum}], got {text}")
    return value


def fraction(text: str, meaning: str = "a number") -> float:
    """``text`` as a number in [0, 1] (argparse's message otherwise, saying what the number is: ``meaning``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{meaning} is in [0, 1]; got {text}")
    return value


def positive_int(text: str) -> int:
    return integer(text, 1)


def non_negative_int(text: str) -> int:
    return integer(text, 0)


def workers(text: str) -> int | str:
    """argparse type of ``--workers``: ``auto`` or an integer >= 0 (0: in-process, N: N Ray actors)."""
    if text == "auto":
        return text
    try:
        return integer(text, 0)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer >= 0, got {text!r}") from None


def seed_int(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2**32 - 1]."""
    return integer(text, 0, 2**32 - 1)


def device(text: str) -> str:
    """argparse type of ``--device``: ``cpu``, ``cuda`` or ``cuda:N``."""
    if text == "cpu" or re.fullmatch(r"cuda(:\d{1,3})?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str = DEVICE_HELP) -> None:
    p.add_argument("--device", type=device, default="cpu", help=help_text)


def add_criterion(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--criterion`` with the registry's names as choices; ``what`` says what it picks in this command."""
    p.add_argument(
        "--criterion",
        default=DEFAULT_CRITERION,
        choices=CRITERION_NAMES,
        help=f"importance criterion {what} (default: {DEFAULT_CRITERION}; taylor reads the gradients of one "
        "training batch, apoz the activations' zeros on one)",
    )


def add_tracking_uri(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP)


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        metavar="ADDRESS",
        help="join a Ray cluster: auto or HOST:PORT (default: start Ray locally and stop it at the end)",
    )
