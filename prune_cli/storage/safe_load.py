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
    except Exception as err:  # noqa: BLE001 - e.g. a text file: the weights-only unpickler's KeyError
        raise UsageError(f"checkpoint {path}: not a file torch.save wrote ({type(err).__name__}: "
                         f"{str(err)[:120]})") from None


JSON_LIMIT = 64 * 1024 * 1024  # a report.json or search.json is kilobytes; anything this large is not one


def read_json(path, limit: int = JSON_LIMIT):
    """A small JSON file we or a user wrote, read as data: a regular file only (not a FIFO, a device or a
    link to one, which could block or never end), at most ``limit`` bytes. Raises ValueError saying why."""
    import json
    import os
    import stat
    info = os.stat(path)  # follows a link: what matters is what would be read
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > limit:
        raise ValueError(f"{info.st_size:,} bytes, more than the {limit:,} a report can be")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than the {limit:,} bytes a report can be")
    return json.loads(data.decode("utf-8"))


def _unpickler_detail(text: str) -> str:
    """The useful line of torch's long weights-only message (e.g. 'Unsupported global: GLOBAL posix.system')."""
    for line in text.splitlines():
        if "Unsupported" in line or "WeightsUnpickler error:" in line and line.split("error:")[1].strip():
            return line.strip()[:160]
    return text.strip().splitlines()[0][:160] if text.strip() else "unreadable"
