"""Bringing any model: tracing is time-limited, no policy leaves a layer without channels, sliced channels shrink in
step or are frozen with the reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.cost import count_cost
from amc.errors import ConfigError, TraceTimeoutError
from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.pruning import ChannelPruner, prune_channels, widths_for
from amc.time_limit import TRACE_TIMEOUT_ENV, TimeLimit, trace_timeout


class _Sliced(nn.Module):
    """A conv whose outputs are cut in two for two branches (CSPNet / GhostNet style), concatenated again.

    Args:
        fixed: Slice with a fixed size (``torch.split(x, 4)``), which breaks once pruned, instead of ``chunk(2)``.
        uneven: Slice 3 / 5 instead of 4 / 4.
    """

    def __init__(self, fixed: bool = False, uneven: bool = False) -> None:
        super().__init__()
        self.fixed, self.uneven = fixed, uneven
        first = 3 if uneven else 4
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(first, 6, 1)
        self.right = nn.Conv2d(8 - first, 6, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stem(x))
        if self.uneven:
            a, b = x[:, :3], x[:, 3:]
        elif self.fixed:
            a, b = torch.split(x, 4, dim=1)
        else:
            a, b = x.chunk(2, dim=1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def test_tracing_past_its_time_limit_fails_with_the_projects_error() -> None:
    model = create_model(ModelSpec("resnet56", 3, 10, 16)).eval()
    with pytest.raises(TraceTimeoutError, match=rf"tracing .*longer than.*\${TRACE_TIMEOUT_ENV}"):
        ModelGraph(model, torch.zeros(1, 3, 16, 16), trace_timeout=1e-3)
    graph = ModelGraph(model, torch.zeros(1, 3, 16, 16), trace_timeout=0)  # 0: no limit
    assert len(graph) > 0


def test_time_limit_reads_its_variable_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_TIMEOUT_ENV, "7.5")
    assert trace_timeout() == 7.5 and TimeLimit("x").seconds == 7.5
    monkeypatch.setenv(TRACE_TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=TRACE_TIMEOUT_ENV):
        trace_timeout()


def test_sliced_channels_shrink_in_step_and_no_slice_is_emptied() -> None:
    model = _Sliced().eval()
    with torch.no_grad():
        model.stem.weight[:4] *= 100  # the first slice is the most important: by magnitude alone the second empties
    x = torch.randn(2, 3, 8, 8)
    graph = ModelGraph(model, x)
    assert graph.group("stem").multiple == 2 and not graph.group("stem").frozen
    for ratio in (0.5, 0.95):
        widths = widths_for(graph, {g.name: ratio for g in graph})
        pruned = prune_channels(model, graph, widths).model
        assert pruned.left.in_channels == pruned.right.in_channels >= 1
        assert count_cost(pruned, x) == graph.estimate(widths)
    # widths of zero, from any source, are clamped to one channel per slice
    pruned = ChannelPruner(model, graph).prune({g.name: 0 for g in graph}).model
    assert (pruned.stem.out_channels, pruned.left.out_channels, pruned.left.in_channels) == (2, 1, 1)
    assert pruned(x).shape == (2, 10)


@pytest.mark.parametrize(("kwargs", "reason"), [({"fixed": True}, "fixed sizes"), ({"uneven": True}, "unequal size")])
def test_slices_that_cannot_shrink_in_step_freeze_their_group_with_the_reason(kwargs: dict, reason: str) -> None:
    model = _Sliced(**kwargs).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = ModelGraph(model, x)
    stem = graph.group("stem")
    assert reason in stem.frozen and stem.multiple == stem.channels
    widths = widths_for(graph, {g.name: 0.9 for g in graph})
    assert widths["stem"] == 8
    assert prune_channels(model, graph, widths).model(x).shape == (1, 10)
