"""Cost models the search budgets against: a small base class plus a registry.

A cost model maps a width configuration (kept channels per group name) to a cost and knows the dense
model's cost. The action wall binary-searches over kept-channel counts, so a cost model must be
**monotone**: keeping more channels in any group never lowers the cost. The analytic ``flops`` and
``params`` models are exact (they are :meth:`amc.groups.ModelGraph.estimate`, the same count the final
check and the physically pruned model give). The ``latency`` model estimates milliseconds per forward
pass from a table of measured layer latencies (:class:`amc.latency.LatencyTable`: monotone by
construction, cached on disk per device); it needs the dense model itself, which
:func:`create_cost_model` passes on.

Register your own::

    @COST_MODELS.register("energy")
    class EnergyCost(CostModel):
        def _cost(self, widths): ...

A cost model that needs more than the graph (the model, settings) overrides :meth:`CostModel.create`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from amc.cost import LatencyConfig
from amc.errors import ConfigError
from amc.groups import ModelGraph
from amc.latency import LatencyTable, fastest_latency
from amc.latency_check import trusted_table
from amc.pruning import sparsity_ratios, zeroed_weights
from amc.registry import Registry


class CostModel:
    """Cost of a width configuration of one traced model (monotone in every group's width).

    Args:
        graph: The traced dense model.
    """

    metric: str = ""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self.dense = float(self._cost(graph.dense_widths()))

    @classmethod
    def create(cls, graph: ModelGraph, model: nn.Module | None = None, **options: Any) -> CostModel:
        """Builds the cost model of ``graph`` (``model``: the dense model; ``options``: what it needs besides).

        The analytic models need the graph alone and ignore the rest.
        """
        return cls(graph)

    def cost(self, widths: Mapping[str, int]) -> float:
        """Absolute cost of ``widths`` (groups not named stay dense)."""
        return float(self._cost(widths))

    def ratio(self, widths: Mapping[str, int]) -> float:
        """Cost of ``widths`` as a fraction of the dense model's cost."""
        return self.cost(widths) / self.dense

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        """:meth:`ratio` of many width configurations: ``widths`` is ``(rows, groups)``, one column per group in
        the graph's order; returns ``(rows,)`` float64.

        This default calls :meth:`ratio` row by row; a model whose cost has an array form overrides it with one
        that gives the same numbers.
        """
        names = self.graph.names
        return np.array([self.ratio(dict(zip(names, map(int, row)))) for row in widths], dtype=np.float64)

    def _cost(self, widths: Mapping[str, int]) -> float:
        """Hook: the absolute cost of ``widths``."""
        raise NotImplementedError


COST_MODELS: Registry[type[CostModel]] = Registry("cost model")


@COST_MODELS.register("flops")
class FlopsCost(CostModel):
    """Exact FLOPs per image (2 per multiply-add), from the graph's analytic cost table."""

    metric = "flops"

    def _cost(self, widths: Mapping[str, int]) -> float:
        return float(self.graph.estimate(widths).flops)

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        return self.graph.estimate_many(widths)[0].astype(np.float64) / self.dense


@COST_MODELS.register("params")
class ParamsCost(CostModel):
    """Exact parameter count, from the graph's analytic cost table.

    With ``granularity`` ``unstructured`` or ``nm`` (a search over per-layer sparsity), :meth:`create` gives a
    :class:`SparseParamsCost`: the non-zero parameters instead.
    """

    metric = "params"

    @classmethod
    def create(
        cls, graph: ModelGraph, model: nn.Module | None = None, *, granularity: str = "channel", **options: Any
    ) -> CostModel:
        if granularity == "channel":
            return cls(graph)
        if model is None:
            raise ConfigError("the sparse params cost model reads the dense model's layer shapes: pass model=")
        return SparseParamsCost(graph, model, granularity)

    def _cost(self, widths: Mapping[str, int]) -> float:
        return float(self.graph.estimate(widths).params)

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        return self.graph.estimate_many(widths)[1].astype(np.float64) / self.dense


class SparseParamsCost(ParamsCost):
    """Non-zero parameters once each group's layers are sparsified (:func:`amc.pruning.sparsify`) at the sparsity
    its width stands for (:func:`amc.pruning.sparsity_ratios`): exact for dense weights without zeros (an
    upper bound otherwise), monotone in every group's width.

    Args:
        graph: The traced dense model.
        model: The dense model (its layers' weight shapes).
        granularity: ``unstructured`` or ``nm``.
    """

    def __init__(self, graph: ModelGraph, model: nn.Module, granularity: str) -> None:
        self.granularity = granularity
        self._layers = {
            g.name: [
                (model.get_submodule(m).weight.numel(), model.get_submodule(m).weight[0].numel()) for m in g.modules
            ]
            for g in graph
        }
        layers = [(i, numel, cols) for i, group in enumerate(self._layers.values()) for numel, cols in group]
        self._column, self._numel, cols = (np.array([layer[k] for layer in layers], dtype=np.int64) for k in range(3))
        self._nm_zeroed = self._numel - self._numel // cols * (2 * (cols // 4) + np.minimum(cols % 4, 2))
        self._channels = np.array([g.channels for g in graph], dtype=np.int64)
        super().__init__(graph)

    def _cost(self, widths: Mapping[str, int]) -> float:
        ratios = sparsity_ratios(self.graph, widths)
        zeroed = sum(
            zeroed_weights(numel, cols, ratios[name], self.granularity)
            for name, layers in self._layers.items()
            for numel, cols in layers
        )
        return float(self.graph.dense_cost.params - zeroed)

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        """:meth:`ratio` of many width configurations (``(rows, groups)``, graph order): :func:`zeroed_weights` on
        arrays, one column per layer."""
        sparsity = 1.0 - np.asarray(widths, dtype=np.int64)[:, self._column] / self._channels[self._column]
        if self.granularity == "unstructured":
            zeroed = np.rint(sparsity * self._numel).astype(np.int64)
        else:
            zeroed = np.broadcast_to(self._nm_zeroed, sparsity.shape)
        kept = self.graph.dense_cost.params - np.where(sparsity > 0, zeroed, 0).sum(axis=1)
        return kept.astype(np.float64) / self.dense


@COST_MODELS.register("latency")
class LatencyCost(CostModel):
    """Estimated milliseconds per forward pass, from a table of measured layer latencies.

    Monotone by construction (see :mod:`amc.latency`), so the budget wall's guarantee holds on the
    estimate; :meth:`measure_many` measures physically pruned models against the dense one with the same
    settings, to check the estimate after a search.

    Args:
        graph: The traced dense model.
        table: The built latency table of ``graph``.
    """

    metric = "latency"

    def __init__(self, graph: ModelGraph, table: LatencyTable) -> None:
        self.table = table
        super().__init__(graph)

    @classmethod
    def create(
        cls,
        graph: ModelGraph,
        model: nn.Module | None = None,
        *,
        latency: LatencyConfig | None = None,
        fewest: Mapping[str, int] | None = None,
        cache_dir: Path | None = None,
        progress: bool = True,
        **options: Any,
    ) -> LatencyCost:
        """Measures (or reads from the cache) the latency table of ``model``.

        Args:
            graph: The traced dense model.
            model: The dense model (required: its layers are measured).
            latency: Measurement settings (default: :class:`amc.cost.LatencyConfig`).
            fewest: The fewest channels the search gives each group (the table's low end).
            cache_dir: Cache directory (None: :func:`amc.baseline.default_cache_dir`).
            progress: Show the build's progress and cost on stderr.
        """
        if model is None:
            raise ConfigError("the latency cost model measures the dense model's layers: pass model=")
        config = latency if latency is not None else LatencyConfig()
        return cls(graph, trusted_table(model, graph, config, fewest, cache_dir, progress))

    @property
    def config(self) -> LatencyConfig:
        return self.table.config

    def _cost(self, widths: Mapping[str, int]) -> float:
        return self.table.estimate(widths)

    def measure_many(self, dense: nn.Module, pruned: Sequence[nn.Module], rounds: int = 3) -> tuple[list[float], float]:
        """Measures every model of ``pruned`` and ``dense`` in ``rounds`` rounds with the table's settings and
        statistic (:func:`amc.latency.fastest_latency`).

        Each round measures every pruned model, then the dense one, so all see the same machine load.

        Returns:
            The median milliseconds of each pruned model over the rounds, and the dense model's.
        """
        shape = tuple(self.graph.example_inputs.shape[1:])
        pruned_ms: list[list[float]] = [[] for _ in pruned]
        dense_ms = []
        for _ in range(max(1, rounds)):
            for times, model in zip(pruned_ms, pruned):
                times.append(fastest_latency(model, shape, self.config))
            dense_ms.append(fastest_latency(dense, shape, self.config))
        return [statistics.median(times) for times in pruned_ms], statistics.median(dense_ms)


def create_cost_model(metric: str, graph: ModelGraph, model: nn.Module | None = None, **options: Any) -> CostModel:
    """Builds the cost model registered under ``metric`` for ``graph``.

    Args:
        metric: A name in :data:`COST_MODELS`.
        graph: The traced dense model.
        model: The dense model (needed by the ``latency`` model, which measures it).
        options: Settings of the cost model (``latency``: ``latency=``, ``fewest=``, ``cache_dir=``, ``progress=``).
    """
    return COST_MODELS.get(metric).create(graph, model, **options)
