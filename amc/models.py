"""Model registry: CIFAR-style ResNets, Plain-20, a small VGG, a small MobileNetV2 and every torchvision
classifier.

Every builder takes the data set's input channels, input size and class count. Torchvision models are
looked up as ``torchvision:NAME`` (``torchvision:resnet18``, ``torchvision:mobilenet_v2``, ...) and are
built without pretrained weights (nothing is downloaded); load a checkpoint to start from trained ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from amc.errors import RegistryError
from amc.registry import Registry

ModelBuilder = Callable[[int, int, int], nn.Module]
"""``builder(in_channels, num_classes, input_size) -> nn.Module``."""

MODELS: Registry[ModelBuilder] = Registry("model")
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelSpec:
    """The identity of a dense architecture: registry name plus the data it was built for."""

    name: str
    in_channels: int
    num_classes: int
    input_size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``."""
    return MODELS.register(name)  # type: ignore[return-value]


def model_names() -> list[str]:
    """Registered names (torchvision classifiers are available as ``torchvision:NAME`` too)."""
    return MODELS.names()


def create_model(spec: ModelSpec) -> nn.Module:
    """Builds the dense, randomly initialised model described by ``spec``."""
    if spec.name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(spec.name[len(TORCHVISION_PREFIX) :], spec)
    builder = MODELS.get(spec.name)
    return builder(spec.in_channels, spec.num_classes, spec.input_size)


def _torchvision_model(arch: str, spec: ModelSpec) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise RegistryError(
            f"unknown torchvision classifier {arch!r}; examples: resnet18, mobilenet_v2, densenet121 "
            f"(see torchvision.models.list_models())"
        )
    kwargs: dict[str, object] = {"weights": None, "num_classes": spec.num_classes}
    if arch.startswith(("inception", "googlenet")):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(arch, **kwargs)
    if spec.in_channels != 3:
        _replace_first_conv(model, spec.in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                1,
                module.bias is not None,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise RegistryError("model has no Conv2d to adapt to the data set's input channels")


# --------------------------------------------------------------------------- CIFAR-style networks
class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016); a 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet with 6n+2 layers (16-32-64 channels); ``residual=False`` gives PlainNet."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, residual: bool = True) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes, layers = 16, []
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes, width, stride, residual))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        # PyTorch's default conv init on purpose: kaiming_normal_(fan_out) is ~2.2x its weight norm, which
        # under BatchNorm is a smaller effective learning rate; trained filters then keep the ranking of
        # their random init and magnitude criteria prune near-random channels (tests/test_training.py).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SmallVGG(nn.Module):
    """A small VGG: three stages of two 3x3 conv-BN-ReLU layers (32-64-128) and a 2-layer head."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 32, "M", 64, 64, "M", 128, 128, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            c = width
        self.features = nn.Sequential(*layers)
        side = max(input_size // 8, 1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * side * side, 128), nn.ReLU(True), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expand, 3x3 depthwise, linear 1x1 project.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of the depthwise conv.
        expand: Expansion factor of the hidden width (1: no expand conv).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_planes * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(in_planes, hidden, 1, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def _conv_bn(in_planes: int, out_planes: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    """Conv-BN-ReLU6 layers (padding keeps the side for stride 1)."""
    conv = nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True)]


MOBILENETV2_SMALL = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 1), (4, 96, 1, 1))
"""``(expand, out channels, blocks, first stride)`` per stage of ``mobilenetv2_small``: 8 blocks, two
stride-2 stages (16x16 -> 8x8 -> 4x4); expansion 4 instead of MobileNetV2's 6 keeps it near 6 MFLOPs and
150k params at 16x16."""


class CifarMobileNetV2(nn.Module):
    """CIFAR-style MobileNetV2: stride-1 3x3 stem, inverted residual stages, 1x1 last conv, pool, linear.

    PyTorch's default init on purpose (see :class:`CifarResNet`): magnitude criteria need weights that
    moved away from their random init.

    Args:
        in_channels: Input image channels.
        num_classes: Classifier outputs.
        stages: ``(expand, out channels, blocks, first stride)`` per stage.
        stem: Stem conv width.
        last: Width of the last 1x1 conv.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        stages: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_SMALL,
        stem: int = 16,
        last: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, stem, 3, 1))]
        planes = stem
        for expand, width, blocks, stride in stages:
            for i in range(blocks):
                layers.append(InvertedResidual(planes, width, stride if i == 0 else 1, expand))
                planes = width
        layers.append(nn.Sequential(*_conv_bn(planes, last, 1, 1)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("resnet20")
def resnet20(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


@register_model("resnet56")
def resnet56(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


@register_model("plain20")
def plain20(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes, residual=False)


@register_model("vgg_small")
def vgg_small(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return SmallVGG(in_channels, num_classes, input_size)


@register_model("mobilenetv2_small")
def mobilenetv2_small(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarMobileNetV2(in_channels, num_classes)
