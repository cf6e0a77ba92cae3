"""Trained weights a user brings (``weights=PATH``) instead of the dense stage training them.

Accepted, all read with ``weights_only=True`` (a file is data, never code):
- a ``state_dict`` saved with ``torch.save(model.state_dict(), PATH)`` (a ``module.`` prefix that
  ``DataParallel`` adds is taken off);
- a dict holding one under ``"state_dict"`` or ``"model_state_dict"`` (what training scripts usually save);
- a prune-cli checkpoint (``pruned.pt``): its weights and its masks, which a run then only shrinks.

Anything that does not fit the model is refused with one line naming the first mismatched key.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from prune_cli.errors import UsageError
from prune_cli.storage.safe_load import safe_load

STATE_KEYS = ("state_dict", "model_state_dict")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(value) -> Path:
    """``weights=`` as a path (``~`` expanded; relative paths are taken from the launch directory)."""
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise UsageError(f"weights={value}: no such file")
    return path.resolve()


@dataclass
class LoadedWeights:
    path: str
    sha256: str
    state_dict: dict
    masks: Optional[dict]      # {name: bool tensor} from a prune-cli checkpoint, else None
    kind: str                  # "state_dict" or "prune-cli checkpoint"

    def describe(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind}


def _tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def read_weights(value, model: nn.Module, model_name: str) -> LoadedWeights:
    """The weights (and masks) of ``weights=value``, checked against ``model``."""
    path = weights_path(value)
    try:
        payload = safe_load(path)
    except UsageError as err:  # "checkpoint PATH: ..." -> "weights=VALUE: ..."
        raise UsageError(f"weights={value}: {str(err).partition(': ')[2]}") from None
    masks, kind = None, "state_dict"
    if isinstance(payload, dict) and "format_version" in payload and "state_dict" in payload:
        state, masks, kind = payload["state_dict"], payload.get("masks") or None, "prune-cli checkpoint"
    elif _tensor_dict(payload):
        state = payload
    else:
        state = next((payload[k] for k in STATE_KEYS if isinstance(payload, dict) and k in payload), None)
    if not _tensor_dict(state):
        raise UsageError(f"weights={value}: holds neither a state_dict (parameter name -> tensor) nor a prune-cli "
                         f"checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    _check_fit(value, state, model.state_dict(), model_name)
    if masks is not None:
        _check_masks(value, masks, dict(model.named_parameters()))
    return LoadedWeights(str(path), file_sha256(path), state, masks, kind)


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "a scalar"


def _check_fit(value, state: Mapping, own: Mapping, model_name: str) -> None:
    where = f"weights={value}: does not fit model={model_name}"
    for name, tensor in own.items():
        if name not in state:
            sample = ", ".join(list(state)[:3])
            raise UsageError(f"{where}: the model's {name!r} is not in the file (it holds {sample}, ...)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(f"{where}: {name!r} is {_shape(state[name])} in the file, {_shape(tensor)} in the model")
    extra = [name for name in state if name not in own]
    if extra:
        raise UsageError(f"{where}: the file's {extra[0]!r} is not a tensor of the model")


def _check_masks(value, masks, params: Mapping) -> None:
    if not isinstance(masks, dict) or not all(isinstance(m, torch.Tensor) for m in masks.values()):
        raise UsageError(f"weights={value}: its masks are not a mapping of parameter name -> tensor")
    for name, mask in masks.items():
        if name not in params or tuple(mask.shape) != tuple(params[name].shape):
            raise UsageError(f"weights={value}: its mask {name!r} fits no parameter of the model")
