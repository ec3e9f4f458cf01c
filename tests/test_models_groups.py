"""Registry-driven: every model traces, prunes at a uniform ratio, runs, and its cost matches the estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from amc.checkpoint import load_model
from amc.cost import count_cost
from amc.data import DataConfig, load_data
from amc.errors import ConfigError, RegistryError, TraceError
from amc.groups import ModelGraph
from amc.importance import group_importance
from amc.models import MODELS, SIGNAL_MODELS, ModelSpec, create_model
from amc.pruning import CRITERIA, kept_channels, prune_channels, replay_history, widths_for
from envs.budget import BudgetWall
from envs.costs import create_cost_model

# Residual (resnet18), depthwise + residual (mobilenet_v2), concatenating (densenet121), squeeze-excite
# multiplications (efficientnet_b0).
TORCHVISION = [
    "torchvision:resnet18",
    "torchvision:mobilenet_v2",
    "torchvision:densenet121",
    "torchvision:efficientnet_b0",
]
CASES = [(name, r) for name in MODELS.names() for r in (0.3, 0.7)] + [(name, 0.5) for name in TORCHVISION]


def _spec(name: str) -> ModelSpec:
    # torchvision classifiers downsample 32x; DenseNet's pooling needs at least 32x32 inputs; MNIST-1D's length 40
    size = 32 if name.startswith("torchvision:") else (40,) if name in SIGNAL_MODELS else 16
    return ModelSpec(name, in_channels=1, num_classes=10, input_size=size)


@pytest.mark.parametrize(("name", "ratio"), CASES)
def test_uniform_prune_matches_estimate(name: str, ratio: float) -> None:
    spec = _spec(name)
    torch.manual_seed(0)
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    assert len(graph) >= 2
    assert graph.classifier not in {m for g in graph for m in g.modules}, "the classifier output must not be pruned"
    assert graph.estimate(graph.dense_widths()) == count_cost(model, spec.example_inputs())
    widths = widths_for(graph, {g.name: ratio for g in graph})
    result = prune_channels(model, graph, widths)
    x = torch.randn(2, *spec.input_shape)
    assert result.model(x).shape == model(x).shape == (2, 10)
    counted = count_cost(result.model, spec.example_inputs())
    assert counted == graph.estimate(widths)
    assert counted.flops < graph.dense_cost.flops and counted.params < graph.dense_cost.params
    assert count_cost(model, spec.example_inputs()) == graph.dense_cost, "the dense model must be left unchanged"


def test_group_names_are_stable_and_ordered() -> None:
    spec = _spec("resnet20")
    a = ModelGraph(create_model(spec), spec.example_inputs())
    b = ModelGraph(create_model(spec), spec.example_inputs())
    assert a.names == b.names
    assert a.names[0] == "conv1" and a.names[1] == "layer1.0.conv1"
    assert len(a) == 12  # stem + 9 block-internal convs + 2 new residual widths (stages 2 and 3)
    stem = a.group("conv1")
    assert set(stem.modules) >= {"conv1", "layer1.0.conv2", "layer1.2.conv2"}  # coupled by the residual adds


def test_mixed_ratios_estimate_exact() -> None:
    spec = _spec("torchvision:mobilenet_v2")
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    gen = torch.Generator().manual_seed(3)
    ratios = {g.name: float(r) for g, r in zip(graph, torch.rand(len(graph), generator=gen) * 0.9)}
    widths = widths_for(graph, ratios, round_to=4)
    assert all(w % 4 == 0 or w == g.channels for g, w in zip(graph, widths.values()))
    result = prune_channels(model, graph, widths)
    assert count_cost(result.model, spec.example_inputs()) == graph.estimate(widths)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_prunes(criterion: str) -> None:
    spec = _spec("resnet20")
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    batch = (torch.randn(8, *spec.input_shape), torch.randint(0, 10, (8,)))
    widths = widths_for(graph, {g.name: 0.5 for g in graph})
    result = prune_channels(model, graph, widths, criterion, calib_batch=batch)
    assert count_cost(result.model, spec.example_inputs()) == graph.estimate(widths)


@pytest.fixture(scope="module")
def trained(trained_resnet20: Path) -> tuple[torch.nn.Module, ModelGraph, tuple[torch.Tensor, torch.Tensor]]:
    """The trained digits ResNet-20, its groups and a calibration batch of real digits."""
    saved = load_model(trained_resnet20 / "model.pt")
    model = saved.model.eval()
    data = load_data(DataConfig("digits"))
    x, y = data.train.tensors[0][:32], data.train.tensors[1][:32]
    return model, ModelGraph(model, saved.spec.example_inputs()), (x, y)


def _removed(model: torch.nn.Module, graph: ModelGraph, name: str, criterion: str, batch) -> set[int]:
    """The channels of group ``name`` that ``criterion`` removes when only that group loses half its channels."""
    widths = widths_for(graph, {name: 0.5})
    result = prune_channels(model, graph, widths, criterion, calib_batch=batch)
    kept = result.kept[name].outputs
    assert len(kept) == widths[name]
    return set(range(graph.group(name).channels)) - set(kept)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_each_criterion_removes_the_channels_it_ranks_lowest(trained, criterion: str) -> None:
    model, graph, batch = trained
    scores = group_importance(model, graph, criterion, calib_batch=batch)
    for name in ("conv1", "layer1.0.conv1", "layer2.1.conv1", "layer3.0.conv2", "layer3.2.conv1"):
        removed = _removed(model, graph, name, criterion, batch)
        order = torch.argsort(scores[name]).tolist()
        assert removed == set(order[: len(removed)]), f"{criterion} on {name}: not the lowest-ranked channels"
        # and strictly: every removed channel scores no higher than every kept one
        kept_scores = scores[name][[c for c in range(len(order)) if c not in removed]]
        assert scores[name][sorted(removed)].max() <= kept_scores.min()


def test_criteria_choose_different_channels(trained) -> None:
    model, graph, batch = trained
    names = ("layer1.0.conv1", "layer2.1.conv1", "layer3.2.conv1")
    picks = {c: [_removed(model, graph, n, c, batch) for n in names] for c in CRITERIA.names()}
    criteria = sorted(picks)
    for i, a in enumerate(criteria):
        for b in criteria[i + 1 :]:
            assert picks[a] != picks[b], f"{a} and {b} removed the same channels of a trained model"


def test_bn_scale_follows_the_batchnorm_scales() -> None:
    spec = _spec("resnet20")
    torch.manual_seed(1)
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    bn = model.get_submodule("layer1.0.bn1")  # the one BatchNorm of group layer1.0.conv1
    # distinct |scales|, small enough that the L1 norm of the group (which includes them) follows the conv weights
    gamma = (torch.randperm(bn.num_features, generator=torch.Generator().manual_seed(2)).float() + 1.0) * 1e-3
    with torch.no_grad():
        bn.weight.copy_(gamma * torch.where(torch.arange(bn.num_features) % 2 == 0, 1.0, -1.0))  # |gamma| ranks
    removed = {c: _removed(model, graph, "layer1.0.conv1", c, None) for c in ("l1", "bn_scale")}
    assert removed["bn_scale"] == set(torch.argsort(gamma)[: bn.num_features // 2].tolist())
    assert removed["l1"] != removed["bn_scale"]


def test_kept_channels_rule() -> None:
    assert kept_channels(16, 0.0) == 16
    assert kept_channels(16, 0.5) == 8
    assert kept_channels(16, 0.99) == 1
    assert kept_channels(64, 0.3, round_to=8) == 48
    keeps = [kept_channels(37, r / 100) for r in range(100)]
    assert keeps == sorted(keeps, reverse=True), "must be monotone in the ratio"


def test_untraceable_model_gives_clear_error() -> None:
    with pytest.raises(TraceError, match=r"'encoder\.layers\.encoder_layer_0\.self_attention' \(MultiheadAttention\)"):
        spec = _spec("torchvision:vit_b_32")
        ModelGraph(create_model(spec), spec.example_inputs())
    with pytest.raises(TraceError, match="depthwise convolution with a channel multiplier"):
        ModelGraph(nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.LazyLinear(3)), torch.randn(1, 4, 5, 5))
    with pytest.raises(TraceError, match="ShuffleNetV2.*while handling"):
        spec = _spec("torchvision:shufflenet_v2_x0_5")
        ModelGraph(create_model(spec), spec.example_inputs())


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(RegistryError, match="resnet20"):
        create_model(_spec("resnet21"))
    with pytest.raises(RegistryError, match="torchvision"):
        create_model(_spec("torchvision:not_a_net"))


class _GroupedNet(nn.Module):
    """Stem -> grouped conv (4 groups) -> depthwise conv -> grouped conv with a residual add, any dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]
        self.stem = nn.Sequential(conv(3, 16, 3, padding=1), norm(16), nn.ReLU())
        self.grouped = nn.Sequential(conv(16, 24, 3, padding=1, groups=4), norm(24), nn.ReLU())
        self.depthwise = nn.Sequential(conv(24, 24, 3, padding=1, groups=24), nn.GroupNorm(2, 24), nn.ReLU())
        self.back = nn.Sequential(conv(24, 16, 1, groups=2, bias=False), norm(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = out + self.back(self.depthwise(self.grouped(out)))
        return self.head(out.flatten(2).mean(-1))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_grouped_convs_prune_in_whole_groups(dim: int, ratio: float) -> None:
    torch.manual_seed(dim)
    model = _GroupedNet(dim).eval()
    x = torch.randn(1, 3, *([6] * dim))
    graph = ModelGraph(model, x)
    multiples = {g.name: g.multiple for g in graph}
    # stem: grouped.0's 4 input groups, back.0's 2 output groups; grouped.0: its 4 output groups, the GroupNorm's 2
    # and back.0's 2 input groups (the depthwise conv in between shrinks with them)
    assert multiples == {"stem.0": 4, "grouped.0": 4}
    widths = widths_for(graph, {g.name: ratio for g in graph})
    assert all(w % multiples[n] == 0 for n, w in widths.items())
    result = prune_channels(model, graph, widths)
    pruned = result.model
    for name in ("grouped.0", "back.0"):
        conv, dense = pruned.get_submodule(name), model.get_submodule(name)
        assert conv.groups == dense.groups and conv.in_channels % conv.groups == 0 == conv.out_channels % conv.groups
        # every conv group keeps the same positions: the weight is the dense one at the kept outputs and at the
        # kept inputs of the first conv group
        outputs, inputs = result.kept[name]
        per_group = inputs[: conv.in_channels // conv.groups]
        assert max(per_group) < dense.in_channels // dense.groups
        assert torch.equal(conv.weight, dense.weight[list(outputs)][:, list(per_group)])
    assert count_cost(pruned, x) == graph.estimate(widths)
    fresh = _GroupedNet(dim).eval()
    fresh.load_state_dict(model.state_dict())
    replay_history(fresh, x, result.history)
    assert torch.equal(fresh(x), pruned(x))


def test_grouped_widths_are_checked_and_walled() -> None:
    model = _GroupedNet(2).eval()
    x = torch.randn(1, 3, 6, 6)
    graph = ModelGraph(model, x)
    assert graph.group("stem.0").multiple == 4 and dict(graph.order)["stem.0"] == 0
    with pytest.raises(TypeError):
        graph.order["stem.0"] = 3  # type: ignore[index]
    with pytest.raises(ConfigError, match="multiple of 4"):
        prune_channels(model, graph, {"stem.0": 10})
    assert widths_for(graph, {"stem.0": 0.3}, round_to=3)["stem.0"] == 12  # lcm(3, 4)
    wall = BudgetWall(graph.groups, create_cost_model("flops", graph), 0.6, 0.0, 0.8, 1)
    assert all(k % 4 == 0 for k in wall.options("stem.0")[0])
    decided: dict[str, int] = {}
    for index, group in enumerate(graph.groups):
        decided[group.name] = wall.choose(decided, index, 0.1).kept
        assert decided[group.name] % group.multiple == 0
    assert wall.meets(decided)
