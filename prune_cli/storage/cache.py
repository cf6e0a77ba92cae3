"""The dense-stage cache: one trained dense model per (model, dataset, train settings, seed, versions).

A sweep over strategies, sparsities and schedules trains each dense model once. How it stays correct when
many jobs share it (joblib workers, SLURM array tasks, several sweeps at once):

- **Keyed by content**: ``cache_key`` hashes exactly the config the dense model depends on, plus the schema
  and torch versions, so a changed setting can never pick up a stale model.
- **Locked**: an entry is looked up and, if missing, built while holding ``dense-KEY.pt.lock`` (``filelock``:
  ``flock`` on Linux). A second job with the same key waits and then reuses the entry instead of training it
  again. The kernel drops an ``flock`` when its process dies, so a job killed with ``kill -9`` or by the OOM
  killer never leaves a stale lock behind. (On a filesystem without ``flock``, filelock falls back to a marker
  file and warns.)
- **Atomic**: an entry is written to a temporary name and renamed into place (``atomic.py``), so its final name
  only ever holds a complete file. A job killed mid-write leaves at most a ``.dense-KEY.pt.*.tmp`` file, which
  the next job to take the lock removes.
- **Checked**: an entry that cannot be read (truncated, corrupt, another format) or lacks a field is reported,
  deleted and rebuilt; a corrupt cache costs one retraining, never a failed run.

Layout: ``<cache.dir>/dense-<key>.pt`` and ``dense-<key>.pt.lock``. Clearing the cache means deleting the
directory, when no run is using it (a lock file deleted under a running job no longer excludes others).
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from prune_cli.storage.atomic import atomic_torch_save
from prune_cli.storage.safe_load import safe_load
from prune_cli.errors import UsageError

log = logging.getLogger(__name__)
SCHEMA = 1  # bump when what an entry holds, or how dense training works, changes
REQUIRED = ("trained", "rewind", "accuracy", "seconds")  # what the pipeline reads from an entry


def cache_key(parts: dict) -> str:
    """Hash of exactly the config the dense model depends on, plus the versions that change its numbers."""
    payload = dict(parts, schema=SCHEMA, torch=torch.__version__.split("+")[0])
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class DenseCache:
    """Entries of one ``kind``: ``dense`` (trained dense models) or ``scores`` (first-round scores)."""

    def __init__(self, directory: Optional[str], enabled: bool = True, kind: str = "dense",
                 required: tuple = REQUIRED):
        self.enabled = bool(enabled) and directory is not None
        self.dir = Path(directory) if directory else None
        self.kind, self.required = kind, required

    def path(self, key: str) -> Path:
        return self.dir / f"{self.kind}-{key}.pt"

    def lock_path(self, key: str) -> Path:
        return self.dir / f"{self.kind}-{key}.pt.lock"

    @contextmanager
    def locked(self, key: str):
        """Held while an entry is looked up and, if needed, built: one process trains it, the others wait."""
        if not self.enabled:
            yield
            return
        from filelock import FileLock, Timeout
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cache.dir={self.dir}: cannot be created ({err.strerror})") from None
        lock = FileLock(str(self.lock_path(key)))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("waiting for another process to finish the cache entry %s", self.path(key).name)
                lock.acquire()
        except OSError as err:
            raise UsageError(f"cache.dir={self.dir}: cannot take the lock {self.lock_path(key).name} "
                             f"({err.strerror or err}); use another cache.dir or cache.enabled=false") from None
        try:
            self._remove_orphans(key)
            yield
        finally:
            lock.release()

    def _remove_orphans(self, key: str) -> None:
        # Writers hold the lock, so while we hold it any temporary file of this entry is a dead writer's.
        for orphan in self.dir.glob(f".{self.path(key).name}.*.tmp"):
            log.info("removing %s, left by a job that was killed while writing it", orphan.name)
            orphan.unlink(missing_ok=True)

    def load(self, key: str, check=None, repair: bool = True) -> Optional[dict]:
        """The entry, or None when there is none or it is unusable (then it is deleted, to be rebuilt, unless
        ``repair`` is false: a reader that does not hold the lock).

        ``check(entry)`` returns what is wrong with an entry that reads fine (e.g. tensors of other shapes
        than the model's), or None."""
        if not self.enabled or not self.path(key).exists():
            return None
        try:
            entry = safe_load(self.path(key))
            if not isinstance(entry, dict):
                raise UsageError(f"holds a {type(entry).__name__}, not an entry")
            missing = [k for k in ("key", *self.required) if k not in entry]
            if missing:
                raise UsageError(f"incomplete entry, no {', '.join(missing)}")
            if entry["key"] != key:
                raise UsageError(f"holds entry {entry['key']}")
            problem = check(entry) if check is not None else None
            if problem:
                raise UsageError(problem)
            return entry
        except Exception as err:  # whatever is wrong with the file, the cure is the same: train again
            if not repair:
                log.warning("cache entry %s is unusable (%s)", self.path(key).name, err)
                return None
            log.warning("cache entry %s is unusable (%s); rebuilding it", self.path(key).name, err)
            self.path(key).unlink(missing_ok=True)
            return None

    def store(self, key: str, entry: dict) -> None:
        """Write the entry atomically. A cache that cannot be written costs reuse, never the run."""
        if not self.enabled:
            return
        try:
            atomic_torch_save(dict(entry, key=key), self.path(key))
        except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
            log.warning("could not write cache entry %s (%s); later runs will train it again",
                        self.path(key).name, getattr(err, "strerror", None) or err)
