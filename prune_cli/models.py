"""Built-in models. Every model takes images in [0, 1] shaped (N, C, H, W) and normalises them itself.

A model is described by a *spec*, ``{"target": "module.Class", "kwargs": {...}}``: plain data that goes into
the checkpoint so ``load_checkpoint`` can rebuild the architecture with no user code. ``width`` scales every
hidden layer; the ``compress`` strategy uses it to train a genuinely smaller network.

Models: ``MLP`` (LeNet-300-100), ``LeNet5``, Frankle & Carbin's ``Conv2``/``Conv4``/``Conv6``, CIFAR ``VGG``
(depth 11/13/16/19, Li et al. 2017's classifier), He et al.'s ``CIFARResNet`` (depth 6n+2, option-B
shortcuts) and ``TorchvisionModel`` (any ``torchvision.models`` classifier by ``arch``, adapted to the data).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
from torch import nn

from .errors import UsageError


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer, so a checkpoint is self-contained."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _scaled(size: int, width: float) -> int:
    return max(1, int(round(size * width)))


class MLP(nn.Module):
    """Fully connected network: Flatten -> [Linear -> ReLU] * len(hidden) -> Linear classifier."""

    def __init__(self, input_shape, num_classes, mean, std, hidden=(256,), width: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        sizes = [int(torch.tensor(input_shape).prod())] + [_scaled(h, width) for h in hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.normalize(x))


class LeNet5(nn.Module):
    """LeNet-5 (conv 6-16, fc 120-84). The second conv is padded on inputs too small for the classic layout."""

    def __init__(self, input_shape, num_classes, mean, std, channels=(6, 16), hidden=(120, 84),
                 width: float = 1.0):
        super().__init__()
        c_in, height, _ = input_shape
        c1, c2 = (_scaled(c, width) for c in channels)
        pad2 = 0 if height // 2 >= 10 else 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(c_in, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        h1, h2 = (_scaled(h, width) for h in hidden)
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
        size = _scaled(size, width)
        layers += [nn.Linear(n_in, size)] + ([nn.BatchNorm1d(size)] if batchnorm else []) + [nn.ReLU()]
        n_in = size
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Frankle & Carbin (2019)'s VGG-like Conv-2/4/6: pairs of 3x3 convs (padding 1, ReLU), a 2x2 max-pool
    after each pair, then fully connected ``hidden`` layers and the classifier. No BatchNorm, as in the paper."""

    def __init__(self, input_shape, num_classes, mean, std, channels=(64, 64), hidden=(256, 256),
                 width: float = 1.0):
        super().__init__()
        c_in, size, _ = input_shape
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        for i, channels_out in enumerate(channels):
            channels_out = _scaled(channels_out, width)
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
            channels_out = _scaled(item, width)
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

    def __init__(self, input_shape, num_classes, mean, std, depth: int = 20, channels=(16, 32, 64),
                 width: float = 1.0):
        super().__init__()
        if int(depth) < 8 or (int(depth) - 2) % 6:
            raise UsageError(f"model.depth={depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110)")
        blocks = (int(depth) - 2) // 6
        widths = [_scaled(c, width) for c in channels]
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


_PROBE_SIZES = (32, 64, 96, 128, 160, 224, 299)


class TorchvisionModel(nn.Module):
    """Any ``torchvision.models`` classification model, named by ``arch``, adapted to the dataset.

    (``arch``, not ``name``: in every model config ``name`` is the option's own name, here ``torchvision``.)

    - ``num_classes`` is passed to the constructor (a pretrained head is replaced by a fresh Linear).
    - Inputs with other than 3 channels: the first convolution is replaced by one taking that many
      (pretrained weights are summed over the RGB channels for 1-channel inputs).
    - Inputs too small for the architecture: upsampled (bilinear) to ``input_size``; ``input_size: null``
      picks the smallest of 32, 64, 96, 128, 160, 224, 299 that the model accepts, found by a forward pass.
    - ``width`` scales channels for models with a width knob (MobileNet V2/V3 ``width_mult``, MNASNet
      ``alpha``); any other model takes only width 1.
    - ``pretrained: true`` loads torchvision's default weights *after* building (see ``build_for``): the spec
      stays the architecture, so a checkpoint is rebuilt without any download.
    ``options`` are extra constructor keywords (e.g. ``{dropout: 0.2}``).
    """

    WIDTH_KNOBS = {"mobilenet_v2": "width_mult", "mobilenet_v3_small": "width_mult",
                   "mobilenet_v3_large": "width_mult", "mnasnet0_5": "alpha", "mnasnet0_75": "alpha",
                   "mnasnet1_0": "alpha", "mnasnet1_3": "alpha"}

    def __init__(self, input_shape, num_classes, mean, std, arch: str = "resnet18", pretrained: bool = False,
                 input_size=None, options=None, width: float = 1.0):
        super().__init__()
        import torchvision
        self.arch, self.num_classes = str(arch), int(num_classes)
        available = torchvision.models.list_models(module=torchvision.models)
        if self.arch not in available:
            raise UsageError(f"model.arch={self.arch}: not a torchvision classification model (e.g. resnet18, "
                             f"mobilenet_v2, vgg11_bn, efficientnet_b0, vit_b_16)")
        kwargs = dict(options or {})
        if self.arch in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)  # training returns plain logits, like every other model
            kwargs.setdefault("init_weights", False)
        if float(width) != 1.0:
            knob = self.WIDTH_KNOBS.get(self.arch)
            if knob is None:
                raise UsageError(f"model=torchvision arch={self.arch} has no width setting, which "
                                 f"strategy=compress needs; models with one: {', '.join(self.WIDTH_KNOBS)}")
            base = 1.0 if knob == "width_mult" else float(self.arch[len("mnasnet"):].replace("_", "."))
            kwargs[knob] = base * float(width)
        self.normalize = Normalize(mean, std)
        self.net = torchvision.models.get_model(self.arch, weights=None, num_classes=self.num_classes, **kwargs)
        channels, height, width_px = input_shape
        self.first_conv = self._first_conv_name()
        if channels != 3:
            self._set_first_conv(channels)
        self.input_size = int(input_size) if input_size else None
        if self.input_size is None:
            self.input_size = self._smallest_size(channels, height, width_px)
        if pretrained:
            self.load_pretrained()

    def _first_conv_name(self) -> str | None:
        return next((n for n, m in self.net.named_modules() if isinstance(m, nn.Conv2d)), None)

    def _set_first_conv(self, channels: int) -> None:
        if self.first_conv is None:
            raise UsageError(f"model=torchvision arch={self.arch}: no Conv2d to adapt to {channels}-channel inputs")
        parent_name, _, child = self.first_conv.rpartition(".")
        parent = self.net.get_submodule(parent_name) if parent_name else self.net
        old = getattr(parent, child)
        setattr(parent, child, nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                         old.dilation, old.groups, old.bias is not None, old.padding_mode))

    def _fits(self, channels: int, height: int, width: int) -> bool:
        try:
            with torch.no_grad():
                was_training = self.net.training
                self.net.eval()(torch.zeros(1, channels, height, width))
                self.net.train(was_training)
            return True
        except (RuntimeError, ValueError, AssertionError):
            return False

    def _smallest_size(self, channels: int, height: int, width: int) -> int | None:
        """None when the native size works; else the smallest probe size the model accepts."""
        if self._fits(channels, height, width):
            return None
        for size in _PROBE_SIZES:
            if size > min(height, width) and self._fits(channels, size, size):
                return size
        raise ValueError(f"torchvision {self.arch} accepts none of the input sizes {_PROBE_SIZES}; "
                         f"set model.input_size")

    def load_pretrained(self) -> list[str]:
        """torchvision's default weights into the matching tensors; returns the names left at their init."""
        from torchvision.models import get_model_weights
        try:
            weights = get_model_weights(self.arch).DEFAULT
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # URLError/OSError/RuntimeError: offline or no such weights
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise UsageError(f"model=torchvision arch={self.arch} pretrained=true: could not get the weights "
                             f"({type(err).__name__}: {reason[:160]}); put the file under "
                             f"$TORCH_HOME/hub/checkpoints or set model.pretrained=false") from None
        own = self.net.state_dict()
        first = f"{self.first_conv}.weight" if self.first_conv else None
        skipped = []
        for key, value in state.items():
            if key not in own:
                continue
            if key == first and own[key].shape[1] == 1 and value.shape[1] == 3:
                value = value.sum(dim=1, keepdim=True)
            if own[key].shape == value.shape:
                own[key] = value
            else:
                skipped.append(key)
        self.net.load_state_dict(own)
        return skipped

    def forward(self, x):
        x = self.normalize(x)
        if self.input_size is not None:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False)
        return self.net(x)


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a model from its spec. Only importable classes are used; nothing is unpickled."""
    module_name, _, class_name = spec["target"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec["kwargs"])


def make_spec(model_cfg: dict[str, Any], info, width: float = 1.0) -> dict[str, Any]:
    """Spec from the ``model`` config group plus what the dataset says (input shape, classes, statistics)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("_target_", "name", "pretrained")}
    kwargs.update(input_shape=list(info.input_shape), num_classes=int(info.num_classes),
                  mean=list(info.mean), std=list(info.std))
    if width != 1.0:
        kwargs["width"] = float(width)
    return {"target": model_cfg["_target_"], "kwargs": kwargs}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _plain_kwargs(model_cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in model_cfg.items() if k not in ("_target_", "name"))


def build_for(model_cfg: dict[str, Any], info, width: float = 1.0) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model for a dataset, turning a shape mismatch into one clear line."""
    spec = make_spec(model_cfg, info, width)
    name = model_cfg.get("name", spec["target"])
    shape_error = (f"model={name} cannot take dataset={info.name} inputs of shape {tuple(info.input_shape)}")
    try:
        model = build(spec)
    except (TypeError, ValueError) as err:
        raise UsageError(f"model={name}: cannot be built with {_plain_kwargs(model_cfg)}: {_first_line(err)}") \
            from None
    except RuntimeError as err:  # a constructor that runs a dummy forward pass to size its layers
        raise UsageError(f"{shape_error}: {_first_line(err)}") from None
    try:
        if model_cfg.get("pretrained") and width == 1.0 and hasattr(model, "load_pretrained"):
            # Weights are an initialisation, not architecture: they stay out of the spec (make_spec), so a
            # checkpoint rebuilds with no download. A narrower (compress) model cannot take them.
            model.load_pretrained()
        with torch.no_grad():
            model.eval()(torch.zeros(2, *info.input_shape))
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(f"{shape_error}: {_first_line(err)}") from None
    return model.train(), spec
