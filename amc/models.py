"""Model registry: CIFAR-style ResNets, Plain-20, a small VGG, a small MobileNetV2, 1-D ResNet-20s for signals
(``resnet20_1d``, ``resnet20_1d_wide``; any widths with :class:`CifarResNet`) and every torchvision classifier.

Every builder takes the data set's input channels, input size and class count. Torchvision models are
looked up as ``torchvision:NAME`` (``torchvision:resnet18``, ``torchvision:mobilenet_v2``, ...) and are
built without pretrained weights (nothing is downloaded); load a checkpoint to start from trained ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from amc.errors import ConfigError, RegistryError
from amc.registry import Registry

InputSize = int | tuple[int, ...]
"""The extent of one input besides its channels: a side (square images) or the sizes of every dimension: ``(L,)``
for 1-D signals, ``(H, W)`` for images, ``(D, H, W)`` for volumes."""
ModelBuilder = Callable[[int, int, InputSize], nn.Module]
"""``builder(in_channels, num_classes, input_size) -> nn.Module``."""

MODELS: Registry[ModelBuilder] = Registry("model")
TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelSpec:
    """The identity of a dense architecture: registry name plus the data it was built for.

    Attributes:
        name: Registry name.
        in_channels: Input channels.
        num_classes: Classifier outputs.
        input_size: A side (square images) or the sizes of every input dimension besides the channels
            (``(L,)``, ``(H, W)``, ``(D, H, W)``); a list is stored as a tuple.
    """

    name: str
    in_channels: int
    num_classes: int
    input_size: InputSize

    def __post_init__(self) -> None:
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))

    @property
    def spatial(self) -> tuple[int, ...]:
        """The input's extent besides its channels (``(S, S)`` for a square side ``S``)."""
        return spatial_of(self.input_size)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.spatial)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)


def spatial_of(input_size: InputSize) -> tuple[int, ...]:
    """``(S, S)`` for a square side ``S``, the sizes themselves for a tuple."""
    return (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers a model builder under ``name``."""
    return MODELS.register(name)  # type: ignore[return-value]


def model_names() -> list[str]:
    """Registered names (torchvision and timm classifiers are available as ``torchvision:NAME`` / ``timm:NAME`` too)."""
    return MODELS.names()


def create_model(spec: ModelSpec) -> nn.Module:
    """Builds the dense, randomly initialised model described by ``spec`` (never pretrained weights)."""
    if spec.name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(spec.name[len(TORCHVISION_PREFIX) :], spec)
    if spec.name.startswith(TIMM_PREFIX):
        return _timm_model(spec.name[len(TIMM_PREFIX) :], spec)
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


def _timm_model(arch: str, spec: ModelSpec) -> nn.Module:
    """A timm model with random weights (``pretrained=False``: nothing is fetched) for the data's channels and
    classes. The input size is not passed: timm's CNNs take any size their strides allow (use a checkpoint for
    trained weights)."""
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("timm:NAME models need timm: pip install timm==1.0.31 'huggingface_hub<1'") from exc
    if not timm.is_model(arch):
        raise RegistryError(
            f"unknown timm model {arch!r}; examples: resnet18, efficientnet_b0, regnetx_002 (see timm.list_models())"
        )
    return timm.create_model(arch, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels)


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
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016); a 1x1 projection when the shape changes.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv.
        residual: Add the shortcut (False: a plain block).
        dims: Input dimensions besides the channels: 1 (signals), 2 (images), 3 (volumes).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool = True, dims: int = 2) -> None:
        super().__init__()
        conv, norm = CONV[dims], BATCH_NORM[dims]
        self.conv1 = conv(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(conv(in_planes, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet with 6n+2 layers in three stages; ``residual=False`` gives PlainNet.

    Args:
        depth: 6n+2 layers (20, 56, ...).
        in_channels: Input channels.
        num_classes: Classifier outputs.
        residual: Residual blocks (False: plain).
        widths: Channels of the three stages (the stem has the first).
        dims: Input dimensions besides the channels: 1 (signals, e.g. MNIST-1D), 2 (images), 3 (volumes).
    """

    def __init__(
        self,
        depth: int,
        in_channels: int,
        num_classes: int,
        residual: bool = True,
        widths: tuple[int, int, int] = (16, 32, 64),
        dims: int = 2,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = CONV[dims](in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = BATCH_NORM[dims](widths[0])
        self.relu = nn.ReLU(inplace=True)
        planes, layers = widths[0], []
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes, width, stride, residual, dims))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = POOL[dims](1)
        self.fc = nn.Linear(widths[-1], num_classes)
        # PyTorch's default conv init on purpose: kaiming_normal_(fan_out) is ~2.2x its weight norm, which
        # under BatchNorm is a smaller effective learning rate; trained filters then keep the ranking of
        # their random init and magnitude criteria prune near-random channels (tests/test_training.py).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SmallVGG(nn.Module):
    """A small VGG: three stages of two 3x3 conv-BN-ReLU layers (32-64-128) and a 2-layer head."""

    def __init__(self, in_channels: int, num_classes: int, input_size: InputSize) -> None:
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
        cells = math.prod(max(s // 8, 1) for s in spatial_of(input_size))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * cells, 128), nn.ReLU(True), nn.Linear(128, num_classes)
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
def resnet20(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


@register_model("resnet56")
def resnet56(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


@register_model("plain20")
def plain20(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes, residual=False)


def _signal_resnet20(
    in_channels: int, num_classes: int, input_size: InputSize, widths: tuple[int, int, int]
) -> nn.Module:
    if isinstance(input_size, int) or len(input_size) != 1:
        raise ConfigError(
            f"the 1-D ResNets take signals (C, L) such as --data mnist1d; got input size {input_size!r}: "
            "choose a 2-D model (resnet20, ...) for images"
        )
    return CifarResNet(20, in_channels, num_classes, widths=widths, dims=1)


SIGNAL_MODELS = ("resnet20_1d", "resnet20_1d_wide")
"""Registered models that take 1-D signals ``(C, L)`` (e.g. ``--data mnist1d``) instead of images."""


@register_model("resnet20_1d")
def resnet20_1d(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    """ResNet-20's shape for 1-D signals (Conv1d), widths 16 / 32 / 64."""
    return _signal_resnet20(in_channels, num_classes, input_size, (16, 32, 64))


@register_model("resnet20_1d_wide")
def resnet20_1d_wide(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    """ResNet-20's shape for 1-D signals (Conv1d), widths 32 / 64 / 128."""
    return _signal_resnet20(in_channels, num_classes, input_size, (32, 64, 128))


@register_model("vgg_small")
def vgg_small(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    return SmallVGG(in_channels, num_classes, input_size)


@register_model("mobilenetv2_small")
def mobilenetv2_small(in_channels: int, num_classes: int, input_size: InputSize) -> nn.Module:
    return CifarMobileNetV2(in_channels, num_classes)
