"""Cost models the search budgets against: a small base class plus a registry.

A cost model maps a width configuration (kept channels per group name) to a cost and knows the dense
model's cost. The action wall binary-searches over kept-channel counts, so a cost model must be
**monotone**: keeping more channels in any group never lowers the cost. The analytic ``flops`` and
``params`` models are exact (they are :meth:`amc.groups.ModelGraph.estimate`, the same count the final
check and the physically pruned model give). A measured latency model can be registered later under
``latency``; it should cache its measurements per width configuration, since the wall asks many times.

Register your own::

    @COST_MODELS.register("energy")
    class EnergyCost(CostModel):
        def _cost(self, widths): ...
"""

from __future__ import annotations

from collections.abc import Mapping

from amc.groups import ModelGraph
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

    def cost(self, widths: Mapping[str, int]) -> float:
        """Absolute cost of ``widths`` (groups not named stay dense)."""
        return float(self._cost(widths))

    def ratio(self, widths: Mapping[str, int]) -> float:
        """Cost of ``widths`` as a fraction of the dense model's cost."""
        return self.cost(widths) / self.dense

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


@COST_MODELS.register("params")
class ParamsCost(CostModel):
    """Exact parameter count, from the graph's analytic cost table."""

    metric = "params"

    def _cost(self, widths: Mapping[str, int]) -> float:
        return float(self.graph.estimate(widths).params)


def create_cost_model(metric: str, graph: ModelGraph) -> CostModel:
    """Builds the cost model registered under ``metric`` for ``graph``."""
    return COST_MODELS.get(metric)(graph)
