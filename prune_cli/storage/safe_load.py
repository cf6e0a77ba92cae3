"""Reading any file we saved (checkpoint, resume state, cache entry) as data, never as code.

``torch.load(weights_only=True)`` rebuilds only tensors and plain containers; everything else is refused with
one line, as is a missing, truncated or corrupt file.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from prune_cli.errors import UsageError


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
