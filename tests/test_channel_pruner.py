"""The cached pruner (amc.pruning.ChannelPruner) gives exactly what a fresh prune_channels gives, and so does the env."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.pruning import CRITERIA, ChannelPruner, PruneResult, prune_channels, widths_for
from amc.reconstruct import reconstruct as reconstruct_layers
from envs import ChannelPruningEnv, EnvConfig

TINY = {"bn_batches": 2, "bn_batch_size": 16, "eval_batch_size": 16, "eval_batches": 3}


class _LayerScaleNet(nn.Module):
    """A conv block with a per-channel scale used outside any module (an unwrapped parameter, as in ConvNeXt)
    and a concatenation, so that the graph's own bookkeeping (parameter nodes, concatenation sizes) changes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.left = nn.Conv2d(12, 8, 3, padding=1)
        self.right = nn.Conv2d(12, 6, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 14).reshape(1, 14, 1, 1))
        self.mix = nn.Sequential(nn.Conv2d(14, 10, 1), nn.BatchNorm2d(10), nn.ReLU())
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = torch.cat([self.left(out), self.right(out)], dim=1) * self.scale
        return self.head(self.mix(out).mean((2, 3)))


def _model(name: str) -> tuple[nn.Module, ModelGraph, torch.Tensor]:
    torch.manual_seed(0)
    if name == "layer_scale":
        model, x = _LayerScaleNet().eval(), torch.randn(1, 1, 8, 8)
    else:
        size = 32 if name.startswith("torchvision:") else 16
        spec = ModelSpec(name, in_channels=1, num_classes=10, input_size=size)
        model, x = create_model(spec).eval(), spec.example_inputs()
    return model, ModelGraph(model, x), x


def _random_widths(graph: ModelGraph, rng: np.random.Generator) -> dict[str, int]:
    return widths_for(graph, {n: float(r) for n, r in zip(graph.names, rng.uniform(0.0, 0.8, len(graph)), strict=True)})


def _assert_same(fresh: PruneResult, cached: PruneResult, x: torch.Tensor) -> None:
    expected, got = fresh.model.state_dict(), cached.model.state_dict()
    assert list(expected) == list(got)
    for key, tensor in expected.items():
        assert torch.equal(tensor, got[key]), key
    assert [(n, p.shape) for n, p in fresh.model.named_parameters()] == [
        (n, p.shape) for n, p in cached.model.named_parameters()
    ]
    assert fresh.history == cached.history and fresh.kept == cached.kept and fresh.widths == cached.widths
    with torch.no_grad():
        torch.testing.assert_close(cached.model(x), fresh.model(x), rtol=1e-6, atol=1e-6)


# residual, depthwise + residual, plain, squeeze-excite multiplications, unwrapped parameter + concatenation
# (torchvision's densenet121 passes too, in about a minute)
@pytest.mark.parametrize(
    "name", ["resnet20", "mobilenetv2_small", "vgg_small", "torchvision:efficientnet_b0", "layer_scale"]
)
def test_pruner_matches_a_fresh_prune_whatever_came_before(name: str) -> None:
    model, graph, x = _model(name)
    dense = copy.deepcopy(model.state_dict())
    pruner = ChannelPruner(model, graph)
    rng = np.random.default_rng(len(name))
    sequence = [_random_widths(graph, rng) for _ in range(3)]
    sequence += [graph.dense_widths(), sequence[0], widths_for(graph, dict.fromkeys(graph.names, 0.8))]
    xs = torch.randn(2, *x.shape[1:])
    for widths in sequence:
        cached = pruner.prune(widths)
        with torch.no_grad():  # what an episode does to the working copy before the next pruning
            cached.model.train()(xs)
            for p in cached.model.parameters():
                p.mul_(0.5)
        cached = pruner.prune(widths)
        _assert_same(prune_channels(model, graph, widths), cached, xs)
    assert all(torch.equal(t, dense[k]) for k, t in model.state_dict().items()), "the dense model must not change"


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_prunes_the_same_channels(criterion: str) -> None:
    model, graph, x = _model("resnet20")
    batch = (torch.randn(8, *x.shape[1:]), torch.randint(0, 10, (8,)))
    pruner = ChannelPruner(model, graph, criterion, batch)
    rng = np.random.default_rng(3)
    for _ in range(3):
        widths = _random_widths(graph, rng)
        _assert_same(prune_channels(model, graph, widths, criterion, batch), pruner.prune(widths), batch[0])


@pytest.fixture(scope="module")
def checkpoint(trained_resnet20: Path) -> str:
    return str(trained_resnet20 / "model.pt")


def _play(env: ChannelPruningEnv, actions: np.ndarray) -> dict:
    env.reset(seed=0)
    for action in actions:
        info = env.step(action)[4]
    return info


@pytest.mark.parametrize(
    ("name", "reconstruct"), [("resnet20", False), ("resnet20", True), ("mobilenetv2_small", False)]
)
def test_episode_result_is_what_a_fresh_prune_gives(checkpoint: str, name: str, reconstruct: bool) -> None:
    """Same top-1, costs and recalibrated model as pruning a fresh copy, after other episodes and evaluations."""
    config = EnvConfig(
        model=name,
        checkpoint=checkpoint if name == "resnet20" else None,
        target_ratio=0.5,
        reconstruct=reconstruct,
        reconstruct_batches=1,
        **TINY,
    )
    env = ChannelPruningEnv.from_config(config)
    rng = np.random.default_rng(7)
    n = len(env.group_names)
    for _ in range(2):  # episodes and evaluations before the one compared
        _play(env, rng.uniform(-1, 1, (n, 1)))
        env.evaluate_ratios(env.uniform_ratios())
    info = _play(env, rng.uniform(-1, 1, (n, 1)))
    env.evaluate_ratios(env.uniform_ratios())  # uses its own working copy: last_model stays the episode's

    widths = widths_for(env.graph, info["ratios"], config.round_to)
    result = prune_channels(env.model, env.graph, widths, config.criterion)
    fresh = result.model
    if reconstruct:
        calib = env._calib[: config.reconstruct_batches]  # the env's first calibration batches
        reconstruct_layers(env.model, fresh, result.kept, calib, seed=config.seed)
    assert info["top1"] == env.score_model(fresh)  # BatchNorm re-estimation on the same batches, then top-1
    assert info["flops"] == env.graph.estimate(widths).flops
    expected, got = fresh.state_dict(), env.last_model.state_dict()
    assert list(expected) == list(got)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    kept = env.evaluation(info["ratios"])
    _play(env, rng.uniform(-1, 1, (n, 1)))
    assert kept.outcome.top1 == info["top1"]
    assert all(torch.equal(t, expected[k]) for k, t in kept.model.state_dict().items()), "evaluation() gives a copy"
