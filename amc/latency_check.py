"""Latency tables you can trust on a shared machine: every table is checked against whole models measured now.

A latency table (:class:`amc.latency.LatencyTable`) is measured once and cached. Measured while other work took
the cores, or read back after the machine changed (another load, another power state), its entries can be far
from what the model takes now: a table built under load was measured ~1.8x too slow with its ratios off, and a
search budgeted against it left 30% of its latency budget unused. :func:`trusted_table` therefore measures two
whole models right after building or loading a table (the dense model and one pruned uniformly to half its
channels; :data:`CHECK_ROUNDS` rounds each, the fastest block of each round, their median) and compares them with
the table's estimates, in milliseconds and as the pruned model's ratio to dense:

- they agree when every millisecond estimate is within the tolerance of its measurement and the ratio within
  the tolerance of the measured ratio; the tolerance is :data:`CHECK_TOLERANCE` or three times the spread of
  the measurements taken now (their interquartile range over their median), whichever is larger, so a noisy
  machine is not mistaken for a stale table;
- when they disagree, every entry is measured again (:meth:`LatencyTable.build` with ``refresh``) and the
  check is repeated; a table that still disagrees is kept (measuring again would not help), and the check says
  how far off its estimates are.

The check, the load average and the spread are recorded with the table (:attr:`LatencyTable.check`, and a
search's ``search.json``). ``LatencyConfig(rebuild=True)`` (``amc search --rebuild-latency``) measures the table
again whatever the cache holds.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from amc.cost import LatencyConfig
from amc.groups import ModelGraph
from amc.latency import LatencyTable, Measure, fastest_latency
from amc.pruning import prune_channels

CHECK_TOLERANCE = 0.2
"""Smallest relative disagreement between a table's estimate and a whole-model measurement that counts."""
CHECK_ROUNDS = 5
"""Measurements of each whole model in a check (their median is compared; their spread sets the tolerance)."""


@dataclass(frozen=True)
class CheckedModel:
    """One whole model of a check.

    Attributes:
        label: ``dense`` or ``half`` (every group at half its channels).
        estimated_ms: The table's estimate.
        measured_ms: The median of the measurements taken now.
        spread: Interquartile range of those measurements over their median.
    """

    label: str
    estimated_ms: float
    measured_ms: float
    spread: float

    @property
    def error(self) -> float:
        return abs(self.estimated_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class TableCheck:
    """A latency table checked against whole models measured now.

    Attributes:
        models: The dense and the half-width model, estimated and measured.
        tolerance: The relative disagreement allowed (see the module docstring).
        load: The one-minute load average per CPU core when the check ran (None where the system has none).
        rebuilt: The table disagreed and its entries were measured again before this check.
    """

    models: tuple[CheckedModel, ...]
    tolerance: float
    load: float | None
    rebuilt: bool = False

    @property
    def ratio_estimated(self) -> float:
        """The half-width model's estimated latency over the dense model's."""
        dense, half = self.models
        return half.estimated_ms / dense.estimated_ms

    @property
    def ratio_measured(self) -> float:
        dense, half = self.models
        return half.measured_ms / dense.measured_ms

    @property
    def ratio_error(self) -> float:
        return abs(self.ratio_estimated - self.ratio_measured) / self.ratio_measured

    @property
    def agrees(self) -> bool:
        return all(m.error <= self.tolerance for m in self.models) and self.ratio_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """The check as search.json records it."""
        return {
            "models": [asdict(m) for m in self.models],
            "ratio_estimated": self.ratio_estimated,
            "ratio_measured": self.ratio_measured,
            "tolerance": self.tolerance,
            "load_per_core": self.load,
            "rebuilt": self.rebuilt,
            "agrees": self.agrees,
        }

    def line(self) -> str:
        dense, half = self.models
        load = f", load {self.load:.2f} per core" if self.load is not None else ""
        verdict = "agrees with" if self.agrees else "DISAGREES with"
        return (
            f"latency table {verdict} whole models measured now (tolerance {self.tolerance:.0%}{load}): dense "
            f"{dense.estimated_ms:.3f} ms estimated / {dense.measured_ms:.3f} measured, half width "
            f"{half.estimated_ms:.3f} / {half.measured_ms:.3f}, ratio {self.ratio_estimated:.3f} / "
            f"{self.ratio_measured:.3f}"
        )


def load_per_core() -> float | None:
    """The one-minute load average over the CPU count (None where the system does not report one)."""
    try:
        return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except OSError:
        return None


def half_widths(graph: ModelGraph) -> dict[str, int]:
    """Every group at half its channels (rounded to its multiple, at least one multiple)."""
    return {g.name: max(g.multiple, (g.channels // 2) // g.multiple * g.multiple) for g in graph}


def check_table(
    table: LatencyTable,
    model: nn.Module,
    measure: Measure | None = None,
    rounds: int = CHECK_ROUNDS,
    tolerance: float = CHECK_TOLERANCE,
    rebuilt: bool = False,
) -> TableCheck:
    """Measures the dense and the half-width model now and compares them with ``table``'s estimates."""
    measure = measure or fastest_latency
    graph = table.graph
    half = half_widths(graph)
    shape = tuple(graph.example_inputs.shape[1:])
    pruned = prune_channels(model, graph, half).model
    figures: dict[str, list[float]] = {"dense": [], "half": []}
    for _ in range(max(1, rounds)):  # interleaved, so both see the same load
        figures["half"].append(measure(pruned, shape, table.config))
        figures["dense"].append(measure(model, shape, table.config))
    estimates = {"dense": table.estimate(graph.dense_widths()), "half": table.estimate(half)}
    models = tuple(_checked(label, estimates[label], figures[label]) for label in ("dense", "half"))
    allowed = max(tolerance, *(3 * m.spread for m in models))
    return TableCheck(models, allowed, load_per_core(), rebuilt)


def _checked(label: str, estimated: float, times: list[float]) -> CheckedModel:
    median = statistics.median(times)
    if len(times) >= 4:
        q1, _, q3 = statistics.quantiles(times, n=4)
        spread = (q3 - q1) / median
    else:
        spread = 0.0
    return CheckedModel(label, estimated, median, spread)


def trusted_table(
    model: nn.Module,
    graph: ModelGraph,
    config: LatencyConfig,
    fewest: Mapping[str, int] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    measure: Measure | None = None,
) -> LatencyTable:
    """:meth:`LatencyTable.build` (from the cache where it can, unless ``config.rebuild``), checked against whole
    models measured now and measured again where they disagree (see the module docstring).

    Returns:
        The table, with :attr:`LatencyTable.check` set.
    """
    table = LatencyTable.build(
        model, graph, config, fewest, cache_dir, progress, measure=measure, refresh=config.rebuild
    )
    check = check_table(table, model, measure)
    if not check.agrees:
        _say(progress, check.line() + "; measuring its entries again")
        table = LatencyTable.build(model, graph, config, fewest, cache_dir, progress, measure=measure, refresh=True)
        check = check_table(table, model, measure, rebuilt=True)
    noisy = "" if check.agrees else "; the machine is too noisy to do better: the estimates are kept as measured"
    _say(progress, check.line() + noisy)
    table.check = check
    return table


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
