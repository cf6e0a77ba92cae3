"""Checkpoints: written as plain containers, read only with ``weights_only=True``.

``pruned.pt`` holds ``{"state_dict", "masks", "model", "config", "report"}`` (and ``"shrunk"`` when a
structured result was physically shrunk). ``load_checkpoint`` rebuilds the module from the spec alone.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .atomic import atomic_torch_save
from .errors import UsageError

FORMAT_VERSION = 1


def safe_load(path, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with one clear error for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = _unpickler_detail(text)
        if "Unsupported global" in text or "GLOBAL" in text:
            raise UsageError(f"checkpoint {path}: refused, it carries pickled objects that are not plain "
                             f"tensors and containers ({detail})") from None
        raise UsageError(f"checkpoint {path}: corrupt or truncated ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"checkpoint {path}: corrupt or truncated ({reason[:160]})") from None


def _unpickler_detail(text: str) -> str:
    """The useful line of torch's long weights-only message (e.g. 'Unsupported global: GLOBAL posix.system')."""
    for line in text.splitlines():
        if "Unsupported" in line or "WeightsUnpickler error:" in line and line.split("error:")[1].strip():
            return line.strip()[:160]
    return text.strip().splitlines()[0][:160] if text.strip() else "unreadable"


def save_checkpoint(path, *, state_dict, masks, spec, config, report, shrunk=None) -> None:
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "masks": masks,
        "model": spec,
        "config": config,
        "report": report,
    }
    if shrunk is not None:
        payload["shrunk"] = shrunk
    atomic_torch_save(payload, path)


def load_checkpoint(path, map_location="cpu", shrunk: bool = False, sparse: bool = False):
    """Rebuild the pruned model (eval mode) from ``pruned.pt``.

    ``shrunk=True`` gives the physically smaller model of a structured run; ``sparse=True`` converts Linear
    layers that are at least ``export.min_sparsity`` sparse to CSR (inference only).
    """
    from . import models
    payload = safe_load(path, map_location)
    for key in ("state_dict", "model"):
        if key not in payload:
            raise UsageError(f"checkpoint {path}: not a prune-cli checkpoint (no {key!r})")
    model = models.build(payload["model"])
    if shrunk:
        if "shrunk" not in payload:
            raise UsageError(f"checkpoint {path}: holds no shrunk model (structured strategies only)")
        from .shrink import rebuild_shrunk
        model = rebuild_shrunk(model, payload["shrunk"]["shapes"])
        model.load_state_dict(payload["shrunk"]["state_dict"])
    else:
        model.load_state_dict(payload["state_dict"])
    if sparse:
        from .sparse_export import to_sparse
        min_sparsity = float(payload.get("config", {}).get("export", {}).get("min_sparsity", 0.8))
        model = to_sparse(model, min_sparsity)
    return model.to(map_location).eval()
