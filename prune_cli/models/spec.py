"""Model specs: ``{"target": "module.Class", "kwargs": {...}}``, plain data that rebuilds an architecture.

A spec goes into every checkpoint, so ``load_checkpoint`` can rebuild the model with no user code. The model
config group gives the class and its options; the data set adds ``input_shape``, ``num_classes`` and its
channel statistics.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
from torch import nn

from prune_cli.errors import UsageError


OWN_MODELS = "prune_cli.models."


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a model from the spec of a run's own config (the user chose its target)."""
    module_name, _, class_name = spec["target"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec["kwargs"])


def _within(target: str, prefix: str) -> bool:
    """``mypkg.`` and ``mypkg`` both cover ``mypkg.models.Net``; ``mypkg.models.Net`` covers itself."""
    prefix = prefix.rstrip(".")
    return target == prefix or target.startswith(prefix + ".")


def build_trusted(spec: Any, trusted: Sequence[str] = (), where: str = "checkpoint") -> nn.Module:
    """Build a model from a spec read from a file, which is data and never a way to run code.

    Only the package's own model classes are built, plus classes or factories from the modules the caller
    trusts (``trusted=("mypkg.",)``). The target is checked before anything is imported, and what it names
    must be defined inside the trusted module (so ``mypkg.utils.system``, re-exported from ``os``, is
    refused). Anything else: one line naming the target.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("target"), str) or not isinstance(
            spec.get("kwargs", {}), dict):
        raise UsageError(f"{where}: its model spec is not {{'target': str, 'kwargs': dict}}")
    trusted = (trusted,) if isinstance(trusted, str) else tuple(trusted)
    target, kwargs = spec["target"], spec.get("kwargs", {})
    own = target.startswith(OWN_MODELS)
    prefixes = [OWN_MODELS] if own else [p for p in trusted if _within(target, p)]
    hint = (f"model target {target!r} is refused: it is not one of prune-cli's models, and no trusted= "
            f"module covers it (pass trusted=(\"{target.rpartition('.')[0] or target}.\",) if you trust that code)")
    if not prefixes or not all(part.isidentifier() and not part.startswith("__") for part in target.split(".")):
        raise UsageError(f"{where}: {hint}")
    if kwargs.get("pretrained"):  # weights come from the checkpoint itself, never from a download
        raise UsageError(f"{where}: its model spec asks for pretrained weights; a checkpoint carries its own")
    module_name, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(f"{where}: model target {target!r} cannot be imported here") from None
    defined_in = str(getattr(obj, "__module__", "") or "")
    is_model_class = isinstance(obj, type) and issubclass(obj, nn.Module)
    if own:
        ok = is_model_class and _within(defined_in, "prune_cli.models")
    else:
        # Trusting a module covers the model classes it defines; trusting the exact target covers that object
        # (a factory function, say), and nothing else.
        ok = any(p.rstrip(".") == target for p in prefixes) and callable(obj) or \
            is_model_class and any(_within(defined_in, p) for p in prefixes)
    if not ok:
        raise UsageError(f"{where}: model target {target!r} is refused: it names "
                         f"{type(obj).__name__} from {defined_in or 'an unknown module'}, not a model class of "
                         f"the trusted module")
    if own:  # the package's own classes: their keys and types as the config schema has them
        from prune_cli.schema import FROM_DATA, check_section, class_schema
        try:
            check_section("model", {k: v for k, v in kwargs.items() if k not in FROM_DATA}, class_schema(obj),
                          f"model={target}")
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None
    model = obj(**kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(f"{where}: model target {target!r} built a {type(model).__name__}, not an nn.Module")
    return model


def accepted(target: str, names: Sequence[str]) -> list[str]:
    """Which of ``names`` the class or factory ``target`` takes: all when it has ``**kwargs``, else those its
    signature names. A user's model gets ``input_shape`` and ``num_classes`` only when it asks for them."""
    import inspect
    module_name, _, name = target.rpartition(".")
    obj = getattr(importlib.import_module(module_name), name)
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return list(names)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return list(names)
    return [n for n in names if n in params]


def make_spec(model_cfg: dict[str, Any], info, width: float = 1.0) -> dict[str, Any]:
    """Spec from the ``model`` config group plus what the dataset says (input shape, classes, statistics),
    each passed when the model's constructor takes it."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("_target_", "name", "pretrained")}
    from_data = {"input_shape": list(info.input_shape), "num_classes": int(info.num_classes),
                 "mean": list(info.mean), "std": list(info.std)}
    kwargs.update({k: from_data[k] for k in accepted(model_cfg["_target_"], list(from_data))})
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
