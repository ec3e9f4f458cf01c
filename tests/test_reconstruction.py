"""Tests of channel reconstruction (amc/reconstruct.py), the kept-channel maps it needs, and the env option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import ConfigError
from amc.groups import ModelGraph
from amc.models import MODELS, SIGNAL_MODELS, ModelSpec, create_model
from amc.pruning import KeptChannels, prune_channels, widths_for
from amc.reconstruct import output_errors, reconstruct, refit_targets
from envs import ChannelPruningEnv, EnvConfig


@pytest.fixture(scope="module")
def checkpoint(trained_resnet20: Path) -> str:
    return str(trained_resnet20 / "model.pt")


def _random_model(name: str) -> tuple[nn.Module, ModelGraph]:
    spec = ModelSpec(name, 1, 10, 16)
    torch.manual_seed(0)
    model = create_model(spec).eval()
    return model, ModelGraph(model, spec.example_inputs())


IMAGE_MODELS = [name for name in MODELS.names() if name not in SIGNAL_MODELS]
"""Reconstruction refits Conv2d and Linear layers; the 1-D models' Conv1d layers are left as they are."""


def _alternating_ratios(graph: ModelGraph) -> dict[str, float]:
    return {name: (0.25, 0.6)[i % 2] for i, name in enumerate(graph.names)}


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_kept_maps_reproduce_the_pruned_weights(name: str) -> None:
    dense, graph = _random_model(name)
    result = prune_channels(dense, graph, widths_for(graph, _alternating_ratios(graph)))
    originals = dict(dense.named_modules())
    for module_name, module in result.model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        original = originals[module_name]
        if module_name not in result.kept:
            assert torch.equal(module.weight, original.weight), module_name
            continue
        outs, ins = (list(idx) for idx in result.kept[module_name])
        expected = original.weight[outs]
        if not (isinstance(original, nn.Conv2d) and original.groups > 1):  # depthwise: one input per output
            expected = expected[:, ins]
        assert torch.equal(module.weight, expected), module_name
        if original.bias is not None:
            assert torch.equal(module.bias, original.bias[outs]), module_name
    assert result.kept, "something was pruned, so some modules must have kept maps"


def test_nothing_pruned_means_no_kept_maps_and_no_change() -> None:
    dense, graph = _random_model("resnet20")
    result = prune_channels(dense, graph, graph.dense_widths())
    assert result.kept == {}
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    out = reconstruct(dense, result.model, result.kept, [torch.randn(8, 1, 16, 16)])
    assert out is result.model
    for key, value in out.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_exact_fit_when_the_removed_channels_are_redundant() -> None:
    """A rank-4 1x1 conv with 8 outputs: any 4 of them span the others, so the next conv refits exactly."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 5, 3, stride=2, padding=1, bias=True))
    with torch.no_grad():
        mix = torch.randn(4, 4)
        dense[0].weight[4:] = torch.einsum("ij,jkab->ikab", mix, dense[0].weight[:4])
    kept = {"0": KeptChannels((0, 1, 2, 3), (0, 1, 2, 3)), "1": KeptChannels(tuple(range(5)), (0, 1, 2, 3))}
    pruned = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=True))
    with torch.no_grad():
        pruned[0].weight.copy_(dense[0].weight[:4])
        pruned[1].weight.copy_(dense[1].weight[:, :4])
        pruned[1].bias.copy_(dense[1].bias)
    batches = [torch.randn(4, 4, 8, 8)]
    assert refit_targets(dense, pruned, kept, batches[0]) == ["1"]
    assert output_errors(dense, pruned, kept, batches)["1"] > 0.05
    reconstruct(dense, pruned, kept, batches, samples_per_image=None, ridge=0.0)
    assert output_errors(dense, pruned, kept, batches)["1"] < 1e-6


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_reconstruction_lowers_every_layer_error_and_leaves_depthwise_alone(name: str) -> None:
    dense, graph = _random_model(name)
    result = prune_channels(dense, graph, widths_for(graph, dict.fromkeys(graph.names, 0.5)))
    batches = [torch.randn(64, 1, 16, 16)]  # 640 sampled rows: more than any layer has weights per output
    before = output_errors(dense, result.model, result.kept, batches)
    depthwise = {
        n: m.weight.clone() for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
    }
    reconstruct(dense, result.model, result.kept, batches)
    after = output_errors(dense, result.model, result.kept, batches)
    assert before and set(after) == set(before)
    assert all(after[n] < before[n] for n in before), {n: (before[n], after[n]) for n in before}
    for module_name, weight in depthwise.items():
        assert torch.equal(result.model.get_submodule(module_name).weight, weight), module_name


def test_reconstruction_rejects_bad_arguments() -> None:
    dense, graph = _random_model("resnet20")
    result = prune_channels(dense, graph, widths_for(graph, dict.fromkeys(graph.names, 0.5)))
    batch = [torch.randn(4, 1, 16, 16)]
    with pytest.raises(ConfigError, match="at least one calibration batch"):
        reconstruct(dense, result.model, result.kept, [])
    with pytest.raises(ConfigError, match="samples_per_image"):
        reconstruct(dense, result.model, result.kept, batch, samples_per_image=0)
    with pytest.raises(ConfigError, match="PruneResult.kept"):
        reconstruct(dense, result.model, {"nope": KeptChannels((0,), (0,))}, batch)


def test_env_config_validates_reconstruction() -> None:
    with pytest.raises(ConfigError, match="lower reconstruct_batches or raise bn_batches"):
        EnvConfig(reconstruct=True, bn_batches=1, reconstruct_batches=2)
    with pytest.raises(ConfigError, match="reconstruct_batches must be an integer >= 1"):
        EnvConfig(reconstruct_batches=0)
    EnvConfig(reconstruct=False, bn_batches=0)  # off: no calibration batches needed


def test_reconstruction_recovers_uniformly_pruned_resnet20(checkpoint: str) -> None:
    """Measured (seed 0, 20% FLOPs, test split): 57.4% without, 98.2% with reconstruction (dense 99.7%)."""
    config = EnvConfig(checkpoint=checkpoint, target_ratio=0.2, max_ratio=0.9)
    plain = ChannelPruningEnv.from_config(config)
    rebuilt = ChannelPruningEnv.from_config(config.replace(reconstruct=True))
    ratios = plain.uniform_ratios()
    without = plain.evaluate_ratios(ratios, split="test")["top1"]
    with_ = rebuilt.evaluate_ratios(ratios, split="test")["top1"]
    assert with_ >= without + 0.15, (without, with_)
    assert with_ >= 0.9, with_


def test_env_with_reconstruction_is_deterministic(checkpoint: str) -> None:
    config = EnvConfig(
        checkpoint=checkpoint,
        target_ratio=0.4,
        max_ratio=0.9,
        reconstruct=True,
        bn_batches=2,
        bn_batch_size=32,
        eval_batch_size=32,
        eval_batches=3,
    )
    first, second = ChannelPruningEnv.from_config(config), ChannelPruningEnv.from_config(config)
    ratios = {name: (0.2, 0.5)[i % 2] for i, name in enumerate(first.group_names)}
    runs = [first.evaluation(ratios), first.evaluation(ratios), second.evaluation(ratios)]  # copies of the models
    assert len({run.outcome.top1 for run in runs}) == 1
    reference = runs[0].model.state_dict()
    for run in runs[1:]:
        for key, value in run.model.state_dict().items():
            assert torch.equal(value, reference[key]), key
