"""Built-in models. Every model takes images in [0, 1] shaped (N, C, H, W) and normalises them itself.

A model is described by a *spec*, ``{"target": "module.Class", "kwargs": {...}}``: plain data that goes into
the checkpoint so ``load_checkpoint`` can rebuild the architecture with no user code. ``width`` scales every
hidden layer; the ``compress`` strategy uses it to train a genuinely smaller network.
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


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a model from its spec. Only importable classes are used; nothing is unpickled."""
    module_name, _, class_name = spec["target"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec["kwargs"])


def make_spec(model_cfg: dict[str, Any], info, width: float = 1.0) -> dict[str, Any]:
    """Spec from the ``model`` config group plus what the dataset says (input shape, classes, statistics)."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("_target_", "name")}
    kwargs.update(input_shape=list(info.input_shape), num_classes=int(info.num_classes),
                  mean=list(info.mean), std=list(info.std))
    if width != 1.0:
        kwargs["width"] = float(width)
    return {"target": model_cfg["_target_"], "kwargs": kwargs}


def build_for(model_cfg: dict[str, Any], info, width: float = 1.0) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model for a dataset, turning a shape mismatch into one clear line."""
    spec = make_spec(model_cfg, info, width)
    name = model_cfg.get("name", spec["target"])
    try:
        model = build(spec)
        with torch.no_grad():
            model.eval()(torch.zeros(2, *info.input_shape))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"model={name} cannot take dataset={info.name} inputs of shape "
                         f"{tuple(info.input_shape)}: {first}") from None
    return model.train(), spec
