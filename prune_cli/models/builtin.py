"""Built-in models. Every model takes images in [0, 1] shaped (N, C, H, W) and normalises them itself.

A model is described by a *spec*, ``{"target": "module.Class", "kwargs": {...}}``: plain data that goes into
the checkpoint so ``load_checkpoint`` can rebuild the architecture with no user code. ``width`` scales every
hidden layer; the ``compress`` strategy uses it to train a genuinely smaller network.

Models: ``MLP`` (LeNet-300-100), ``LeNet5``, Frankle & Carbin's ``Conv2``/``Conv4``/``Conv6``, CIFAR ``VGG``
(depth 11/13/16/19, Li et al. 2017's classifier), He et al.'s ``CIFARResNet`` (depth 6n+2, option-B
shortcuts) and ``TorchvisionModel`` (any ``torchvision.models`` classifier by ``arch``, adapted to the data).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from prune_cli.errors import UsageError
from prune_cli.schema import WIDTH, Int, ListOf

UNITS = Int(1, 1 << 20)  # a layer width
CHANNELS = Int(1, 1 << 14)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer, so a checkpoint is self-contained."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def scaled(size: int, width: float) -> int:
    return max(1, int(round(size * width)))


class MLP(nn.Module):
    """Fully connected network: Flatten -> [Linear -> ReLU] * len(hidden) -> Linear classifier."""
    config_schema = {"width": WIDTH, "hidden": ListOf(UNITS)}

    def __init__(self, input_shape, num_classes, mean, std, hidden=(256,), width: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        sizes = [math.prod(input_shape)] + [scaled(h, width) for h in hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.normalize(x))


class LeNet5(nn.Module):
    """LeNet-5 (conv 6-16, fc 120-84). The second conv is padded on inputs too small for the classic layout."""
    config_schema = {"width": WIDTH, "channels": ListOf(CHANNELS, 2, 2), "hidden": ListOf(UNITS, 2, 2)}

    def __init__(self, input_shape, num_classes, mean, std, channels=(6, 16), hidden=(120, 84),
                 width: float = 1.0):
        super().__init__()
        c_in, height, _ = input_shape
        c1, c2 = (scaled(c, width) for c in channels)
        pad2 = 0 if height // 2 >= 10 else 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(c_in, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        h1, h2 = (scaled(h, width) for h in hidden)
        self.classifier = nn.Sequential(
            nn.Linear(flat, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


def _pool_if_room(size: int) -> tuple[list[nn.Module], int]:
    """A 2x2 max-pool, left out once the feature map is 1 pixel wide, so small inputs (8x8) still fit."""
    return ([nn.MaxPool2d(2)], size // 2) if size >= 2 else ([], size)


def _flat_size(features: nn.Module, input_shape) -> int:
    with torch.no_grad():
        was_training = features.training
        out = features.eval()(torch.zeros(1, *input_shape)).shape[1]
        features.train(was_training)
    return out


def _mlp_head(n_in: int, hidden, num_classes: int, width: float, batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        size = scaled(size, width)
        layers += [nn.Linear(n_in, size)] + ([nn.BatchNorm1d(size)] if batchnorm else []) + [nn.ReLU()]
        n_in = size
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Frankle & Carbin (2019)'s VGG-like Conv-2/4/6: pairs of 3x3 convs (padding 1, ReLU), a 2x2 max-pool
    after each pair, then fully connected ``hidden`` layers and the classifier. No BatchNorm, as in the paper."""
    config_schema = {"width": WIDTH, "channels": ListOf(CHANNELS, 1), "hidden": ListOf(UNITS)}

    def __init__(self, input_shape, num_classes, mean, std, channels=(64, 64), hidden=(256, 256),
                 width: float = 1.0):
        super().__init__()
        c_in, size, _ = input_shape
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        for i, channels_out in enumerate(channels):
            channels_out = scaled(channels_out, width)
            layers += [nn.Conv2d(c_in, channels_out, 3, padding=1), nn.ReLU()]
            c_in = channels_out
            if i % 2 == 1:
                pool, size = _pool_if_room(size)
                layers += pool
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = _mlp_head(_flat_size(self.features, input_shape), hidden, num_classes, width)

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


class Conv2(ConvNet):
    """Conv-2: conv 64-64, pool, fc 256-256 (Frankle & Carbin 2019, Figure 2)."""

    def __init__(self, input_shape, num_classes, mean, std, channels=(64, 64), hidden=(256, 256),
                 width: float = 1.0):
        super().__init__(input_shape, num_classes, mean, std, channels, hidden, width)


class Conv4(ConvNet):
    """Conv-4: conv 64-64, pool, 128-128, pool, fc 256-256."""

    def __init__(self, input_shape, num_classes, mean, std, channels=(64, 64, 128, 128), hidden=(256, 256),
                 width: float = 1.0):
        super().__init__(input_shape, num_classes, mean, std, channels, hidden, width)


class Conv6(ConvNet):
    """Conv-6: conv 64-64, pool, 128-128, pool, 256-256, pool, fc 256-256."""

    def __init__(self, input_shape, num_classes, mean, std, channels=(64, 64, 128, 128, 256, 256),
                 hidden=(256, 256), width: float = 1.0):
        super().__init__(input_shape, num_classes, mean, std, channels, hidden, width)


VGG_LAYOUTS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG for CIFAR (Simonyan & Zisserman 2015 layouts; Zagoruyko 2015's CIFAR variant): 3x3 conv -> BN ->
    ReLU, 2x2 max-pools, no dropout.

    The classifier follows Li et al. (2017), who pruned this model: ``hidden=[512]`` gives
    Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, classes) ("BN after each conv and the first linear
    layer"). ``hidden=[]`` gives a single Linear classifier (the variant of Liu et al. 2017's slimming).
    Pools that would shrink the map below 1x1 are left out, so 28x28 and 8x8 inputs also fit.
    """

    config_schema = {"width": WIDTH, "depth": Int(1, 1000), "hidden": ListOf(UNITS)}

    def __init__(self, input_shape, num_classes, mean, std, depth: int = 16, hidden=(512,),
                 width: float = 1.0):
        super().__init__()
        if int(depth) not in VGG_LAYOUTS:
            raise UsageError(f"model.depth={depth}: VGG depth must be one of {sorted(VGG_LAYOUTS)}")
        c_in, size, _ = input_shape
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        for item in VGG_LAYOUTS[int(depth)]:
            if item == "M":
                pool, size = _pool_if_room(size)
                layers += pool
                continue
            channels_out = scaled(item, width)
            layers += [nn.Conv2d(c_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
                       nn.ReLU(inplace=True)]
            c_in = channels_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = _mlp_head(_flat_size(self.features, input_shape), hidden, num_classes, width,
                                    batchnorm=True)

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, or a 1x1 conv + BN shortcut (He et al.'s option B)
    where the stride or the channel count changes. Option B, not A's zero-padding, because it is plain
    modules that Torch-Pruning can trace, so residual coupling is handled exactly."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """He et al. (2016)'s CIFAR ResNet-(6n+2): a 3x3 conv of 16 channels, three stages of n basic blocks
    (16, 32, 64 channels; stride 2 entering stages 2 and 3), global average pooling, one Linear classifier.
    depth 20 has 0.27M parameters, 56 has 0.85M (with option-B shortcuts a few thousand more)."""

    config_schema = {"width": WIDTH, "depth": Int(8, 10_000), "channels": ListOf(CHANNELS, 3, 3)}

    def __init__(self, input_shape, num_classes, mean, std, depth: int = 20, channels=(16, 32, 64),
                 width: float = 1.0):
        super().__init__()
        if int(depth) < 8 or (int(depth) - 2) % 6:
            raise UsageError(f"model.depth={depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110)")
        blocks = (int(depth) - 2) // 6
        widths = [scaled(c, width) for c in channels]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))
