"""A time limit, with progress lines, for the steps that can run for minutes: Torch-Pruning's tracing.

Torch-Pruning's ``DependencyGraph.build_dependency`` and ``get_all_groups`` are plain Python loops that
can run for minutes on architectures that slice channels after a concatenation (some timm models).
:class:`TimeLimit` bounds such a step: past ``seconds`` it interrupts the thread that runs it (an
asynchronous exception, delivered between two Python bytecodes, so a single long C call finishes
first) and raises :class:`~amc.errors.TraceTimeoutError` naming the step and how to raise the limit.
While the step runs longer than the progress interval it prints one line per interval to stderr.

The limit is ``$AMC_TRACE_TIMEOUT`` seconds (default :data:`DEFAULT_TRACE_TIMEOUT`; 0 turns it off).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from amc.errors import ConfigError, TraceTimeoutError
from amc.progress import default_interval, format_duration

T = TypeVar("T")

TRACE_TIMEOUT_ENV = "AMC_TRACE_TIMEOUT"
"""Environment variable: seconds one tracing step may take (0: no limit)."""
DEFAULT_TRACE_TIMEOUT = 120.0
"""Seconds one tracing step may take when the variable is not set (the slowest of the 64 torchvision classifiers
the model zoo prunes traced well within it; four timm models ran past it, see ``results/model_zoo.json``)."""


def seconds_from_env(name: str, default: float) -> float:
    """The environment variable ``name`` as seconds >= 0 (0: no limit), else ``default`` when it is unset or empty.

    Raises:
        ConfigError: when the variable is set to something that is not a number >= 0.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"${name} must be a number of seconds >= 0 (0: no limit), got {text!r}")
    return value


def trace_timeout() -> float:
    """``$AMC_TRACE_TIMEOUT`` as seconds (0: no limit), else :data:`DEFAULT_TRACE_TIMEOUT`.

    Raises:
        ConfigError: when the variable is set to something that is not a number >= 0.
    """
    return seconds_from_env(TRACE_TIMEOUT_ENV, DEFAULT_TRACE_TIMEOUT)


class _Expired(BaseException):
    """Raised inside the limited thread; a BaseException so Torch-Pruning's ``except Exception`` cannot swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedules ``exc`` in thread ``thread_id`` (None: cancels a scheduled one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class TimeLimit:
    """Bounds the time of a call and reports its progress: ``TimeLimit("tracing X").call(fn)``.

    Args:
        what: The step, as the error and the progress lines name it (``tracing the dependency groups of X``).
        seconds: The limit (None: :func:`trace_timeout`; 0: no limit, progress lines only).
        stream: Where progress lines go (default: ``sys.stderr``).
        interval: Seconds between two progress lines (None: ``$AMC_PROGRESS_INTERVAL``, default 10).

    Attributes:
        phase: What runs now, shown in progress lines and the error (the limited code sets it).
        done, total: Layers of the current phase done and in all (``None``: not counted).
    """

    def __init__(
        self, what: str, seconds: float | None = None, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.what = what
        self.seconds = trace_timeout() if seconds is None else float(seconds)
        self.phase = ""
        self.done: int | None = None
        self.total: int | None = None
        self._stream = stream
        self._interval = default_interval() if interval is None else interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._finished = False
        self._fired = False
        self._thread_id = 0
        self._start = 0.0

    def call(self, fn: Callable[[], T]) -> T:
        """Returns ``fn()``, interrupted past the limit.

        Raises:
            TraceTimeoutError: when ``fn`` ran longer than the limit; it names the step and how to raise the limit.
        """
        try:
            self._thread_id, self._start = threading.get_ident(), time.monotonic()
            watcher = threading.Thread(target=self._watch, name="amc-time-limit", daemon=True)
            try:
                watcher.start()
                return fn()
            finally:
                self._disarm()
        except _Expired:
            raise TraceTimeoutError(self._message()) from None

    def _disarm(self) -> None:
        """Stops the watcher; an interruption it scheduled and that was not delivered yet is raised here."""
        with self._lock:
            self._finished = True
            fired = self._fired
            if fired:
                _raise_in(self._thread_id, None)
        self._stop.set()
        if fired:
            raise _Expired

    def status(self) -> str:
        """``get_all_groups, 37/140 layers`` (the phase and its count, when set)."""
        count = f", {self.done}/{self.total} layers" if self.done is not None and self.total else ""
        return f"{self.phase or 'running'}{count}"

    def _message(self) -> str:
        return (
            f"{self.what} took longer than {format_duration(self.seconds)} (stopped in {self.status()}); "
            f"Torch-Pruning's tracing is slow on architectures that slice channels after a concatenation. "
            f"Raise the limit with ${TRACE_TIMEOUT_ENV}=<seconds> (0: none) or trace_timeout=<seconds>, "
            "or choose another model"
        )

    def _watch(self) -> None:
        next_line = self._interval if self._interval > 0 else math.inf
        while True:
            elapsed = time.monotonic() - self._start
            wait = min(next_line, self.seconds if self.seconds > 0 else math.inf) - elapsed
            if self._stop.wait(max(wait, 0.0) if math.isfinite(wait) else None):
                return
            elapsed = time.monotonic() - self._start
            if self.seconds > 0 and elapsed >= self.seconds:
                with self._lock:
                    if not self._finished:
                        self._fired = True
                        _raise_in(self._thread_id, _Expired)
                return
            if elapsed >= next_line:
                self._progress(elapsed)
                next_line += self._interval

    def _progress(self, elapsed: float) -> None:
        limit = f" of {format_duration(self.seconds)} allowed" if self.seconds > 0 else ""
        try:
            print(f"{self.what}: {self.status()}, {format_duration(elapsed)}{limit}", file=self._stream or sys.stderr)
        except (OSError, ValueError):
            pass


__all__ = ["DEFAULT_TRACE_TIMEOUT", "TRACE_TIMEOUT_ENV", "TimeLimit", "trace_timeout"]
