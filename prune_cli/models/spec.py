"""Model specs: ``{"target": "module.Class", "kwargs": {...}}``, plain data that rebuilds an architecture.

A spec goes into every checkpoint, so ``load_checkpoint`` can rebuild the model with no user code. The model
config group gives the class and its options; the data set adds ``input_shape``, ``num_classes`` and its
channel statistics.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from prune_cli.errors import UsageError


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
