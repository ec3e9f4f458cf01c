"""Progress of the long loops (baseline training, fine-tuning, search episodes, sensitivity).

On a terminal :class:`Progress` draws a tqdm bar. When its stream is a file or a pipe (logs, CI, ``nohup``)
a bar is useless, so it writes one plain line every ``interval`` seconds instead, e.g.
``search ddpg: 120/300 episodes, 2.1 s/episode, ETA 6m18s, best_top1=97.30%`` (the rate is the average since
the start, the ETA uses the rate since the previous line), and a last line when the
loop ends. The interval is ``$AMC_PROGRESS_INTERVAL`` seconds (default :data:`DEFAULT_INTERVAL`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

INTERVAL_ENV = "AMC_PROGRESS_INTERVAL"
"""Environment variable: seconds between two progress lines when the output is not a terminal."""
RECENT_MIN_S = 1.0
"""Seconds since the previous progress line below which the ETA uses the average rate since the start."""
DEFAULT_INTERVAL = 10.0
"""Seconds between two progress lines when the output is not a terminal and the variable is not set."""


def default_interval() -> float:
    """``$AMC_PROGRESS_INTERVAL`` as seconds (>= 0), else :data:`DEFAULT_INTERVAL`."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``42s``, ``6m18s``, ``1h02m`` (rounded to whole seconds)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """A progress display with tqdm's ``update`` / ``set_postfix`` / ``close``.

    Args:
        total: Units in the loop (None: unknown, no ETA).
        desc: What runs (``search ddpg``, ``train resnet20``); starts every line.
        unit: One unit, singular (``episode``, ``step``).
        unit_plural: The plural (default: ``unit`` + ``s``).
        initial: Units already done (a resumed search).
        enabled: False shows nothing at all.
        leave: On a terminal, keep the finished bar (tqdm's ``leave``).
        stream: Where to write (default: ``sys.stderr`` at construction).
        interval: Seconds between two lines when ``stream`` is not a terminal (None: :func:`default_interval`;
            0: one line per update).
        clock: Returns seconds (default: ``time.monotonic``); tests pass their own.
        tty: Whether ``stream`` is a terminal (None: ask ``stream.isatty()``).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "step",
        unit_plural: str | None = None,
        *,
        initial: int = 0,
        enabled: bool = True,
        leave: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.unit_plural = unit_plural or f"{unit}s"
        self.n = self._start_n = initial
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = default_interval() if interval is None else max(float(interval), 0.0)
        self._clock = clock
        self._postfix: dict[str, Any] = {}
        self._bar: Any = None
        self._closed = False
        self._printed_n: int | None = None
        self.tty = _is_tty(self.stream) if tty is None else tty
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream)
        self._start = self._last = clock()
        self._mark = (self._start, self.n)  # clock and count at the last line: the window of the ETA's rate

    @property
    def lines(self) -> bool:
        """Whether progress goes out as plain lines (enabled, not a terminal)."""
        return self.enabled and not self.tty

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        """Figures shown after the count (``best_top1=97.30%``)."""
        if not self.enabled:
            return
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **values)

    def update(self, n: int = 1) -> None:
        """``n`` more units are done; on a non-terminal writes a line when ``interval`` has passed."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def close(self) -> None:
        """Ends the display: closes the bar, or writes the last line (when units were done since the last one)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.lines and self.n > self._start_n and self._printed_n != self.n:
            self._write(self._clock(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at clock time ``now``."""
        done = self.n - self._start_n
        elapsed = max(now - self._start, 0.0)
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        one = (self.total if self.total is not None else self.n) == 1
        parts = [f"{self.desc}: {count} {self.unit if one else self.unit_plural}"]
        if done > 0 and elapsed > 0:
            per_unit = elapsed / done
            parts.append(
                f"{per_unit:.1f} s/{self.unit}" if per_unit >= 1 else f"{1 / per_unit:.1f} {self.unit_plural}/s"
            )
            if final:
                parts.append(f"took {format_duration(elapsed)}")
            elif self.total is not None:
                parts.append(f"ETA {format_duration(max(self.total - self.n, 0) * self._recent(now, per_unit))}")
        elif final:
            parts.append(f"took {format_duration(elapsed)}")
        parts.extend(f"{k}={v}" for k, v in self._postfix.items())
        return ", ".join(parts)

    def _recent(self, now: float, overall: float) -> float:
        """Seconds per unit since the last line (``overall`` before the first): the ETA's rate. A search's first
        episodes (the warm-up: no learner) run several times faster than the rest, so the average since the start
        promised a 5.5-minute search in 2.3 minutes. Under a second since the last line (several workers' episodes
        finishing together, lines printed on every update) says nothing about the rate: ``overall`` then."""
        since, n = self._mark
        return (now - since) / (self.n - n) if self.n > n and now - since >= RECENT_MIN_S else overall

    def _write(self, now: float, final: bool = False) -> None:
        self._printed_n = self.n
        try:
            print(self.line(now, final), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            pass
        self._mark = (now, self.n)


__all__ = ["DEFAULT_INTERVAL", "INTERVAL_ENV", "Progress", "default_interval", "format_duration"]
