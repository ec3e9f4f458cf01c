"""Registry-driven: every model traces, prunes at a uniform ratio, runs, and its cost matches the estimate."""

from __future__ import annotations

import pytest
import torch

from amc.cost import count_cost
from amc.errors import RegistryError, TraceError
from amc.groups import ModelGraph
from amc.models import MODELS, ModelSpec, create_model
from amc.pruning import CRITERIA, kept_channels, prune_channels, widths_for

# Residual (resnet18), depthwise + residual (mobilenet_v2), concatenating (densenet121), squeeze-excite
# multiplications (efficientnet_b0).
TORCHVISION = ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:densenet121", "torchvision:efficientnet_b0"]
CASES = [(name, r) for name in MODELS.names() for r in (0.3, 0.7)] + [(name, 0.5) for name in TORCHVISION]


def _spec(name: str) -> ModelSpec:
    # torchvision classifiers downsample 32x; DenseNet's pooling needs at least 32x32 inputs
    size = 32 if name.startswith("torchvision:") else 16
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


def test_criteria_choose_different_channels() -> None:
    spec = _spec("resnet20")
    torch.manual_seed(1)
    model = create_model(spec).eval()
    graph = ModelGraph(model, spec.example_inputs())
    widths = widths_for(graph, {"layer1.0.conv1": 0.5})
    picks = {c: prune_channels(model, graph, widths, c).history[0][2] for c in ("l1", "bn_scale")}
    assert len(picks["l1"]) == 8
    # BN scales start at 1 in every channel, so bn_scale ranks differently from the weights' L1 norm
    assert picks["l1"] != picks["bn_scale"]


def test_kept_channels_rule() -> None:
    assert kept_channels(16, 0.0) == 16
    assert kept_channels(16, 0.5) == 8
    assert kept_channels(16, 0.99) == 1
    assert kept_channels(64, 0.3, round_to=8) == 48
    keeps = [kept_channels(37, r / 100) for r in range(100)]
    assert keeps == sorted(keeps, reverse=True), "must be monotone in the ratio"


def test_untraceable_model_gives_clear_error() -> None:
    with pytest.raises(TraceError, match="grouped convolution"):
        spec = _spec("torchvision:regnet_x_400mf")
        ModelGraph(create_model(spec), spec.example_inputs())
    with pytest.raises(TraceError, match="ShuffleNetV2.*while handling"):
        spec = _spec("torchvision:shufflenet_v2_x0_5")
        ModelGraph(create_model(spec), spec.example_inputs())


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(RegistryError, match="resnet20"):
        create_model(_spec("resnet21"))
    with pytest.raises(RegistryError, match="torchvision"):
        create_model(_spec("torchvision:not_a_net"))
