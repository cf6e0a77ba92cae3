"""The dense-stage cache: one trained dense model per (model, dataset, train settings, seed, versions).

A sweep over strategies, sparsities and schedules trains each dense model once. Entries are written
atomically and built under a file lock, so two processes never train the same entry twice and never read a
half-written one; an entry that fails to load is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import torch

from .atomic import atomic_torch_save
from .checkpoint import safe_load
from .errors import UsageError

log = logging.getLogger(__name__)
SCHEMA = 1  # bump when what an entry holds, or how dense training works, changes


def dense_key(parts: dict) -> str:
    """Hash of exactly the config the dense model depends on, plus the versions that change its numbers."""
    payload = dict(parts, schema=SCHEMA, torch=torch.__version__.split("+")[0])
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class DenseCache:
    def __init__(self, directory: Optional[str], enabled: bool = True):
        self.enabled = bool(enabled) and directory is not None
        self.dir = Path(directory) if directory else None

    def path(self, key: str) -> Path:
        return self.dir / f"dense-{key}.pt"

    @contextmanager
    def locked(self, key: str):
        """Held while an entry is looked up and, if needed, built."""
        if not self.enabled:
            yield
            return
        from filelock import FileLock
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cache.dir={self.dir}: cannot be created ({err.strerror})") from None
        with FileLock(str(self.path(key)) + ".lock"):
            yield

    def load(self, key: str) -> Optional[dict]:
        if not self.enabled or not self.path(key).exists():
            return None
        try:
            entry = safe_load(self.path(key))
            if entry.get("key") != key or "trained" not in entry:
                raise UsageError("incomplete entry")
            return entry
        except UsageError as err:
            log.warning("cache entry %s is unreadable (%s); rebuilding it", self.path(key).name, err)
            self.path(key).unlink(missing_ok=True)
            return None

    def store(self, key: str, entry: dict) -> None:
        if self.enabled:
            atomic_torch_save(dict(entry, key=key), self.path(key))
