"""One error hierarchy for the whole project.

Every error a user can cause derives from :class:`AmcError`; the CLI turns it into a one-line message
and exit code 2. Messages say what was wrong and how to fix it.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): for errors that quote another one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class AmcError(Exception):
    """Base class of every error amc-search raises on purpose."""


class ConfigError(AmcError, ValueError):
    """A configuration value, CLI flag or argument is invalid."""


class RegistryError(ConfigError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(AmcError, FileNotFoundError):
    """A data set directory is missing or does not have the expected layout."""


class TraceError(AmcError, RuntimeError):
    """A model's dependency groups could not be traced."""


class PolicyError(AmcError, ValueError):
    """A policy file is malformed or invalid."""


class PolicyMismatchError(PolicyError):
    """A policy was made for another model than the one it is applied to."""


class ModelFileError(AmcError, ValueError):
    """A saved model file is malformed or unreadable."""


class BudgetError(AmcError, ValueError):
    """A target cannot be met within the allowed pruning ratios."""


class TraceTimeoutError(TraceError):
    """Tracing a model's dependency groups took longer than its time limit (``$AMC_TRACE_TIMEOUT``)."""


class RolloutError(AmcError, RuntimeError):
    """A parallel search's rollout workers made no progress: all of them were lost, or past ``$AMC_ROLLOUT_TIMEOUT``."""
