"""Atomic file writes: readers see the old file or the new one, never half of one.

A run can be interrupted (Ctrl-C, SLURM preemption) at any moment, and `prune-compare` may read a run
directory while the run is still writing it. Every file is therefore written to a temporary name in the
same directory (so the final rename stays on one filesystem, where `os.replace` is atomic) and renamed
over the target only once it is complete.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` when the block succeeds.

    The temporary file already exists (empty) when yielded, so writers may open it or overwrite it.
    On any exception, KeyboardInterrupt included, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    tmp = _create_temp(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        # newline="" keeps the caller's line endings byte for byte on every platform.
        with open(tmp, "w", encoding=encoding, newline="") as handle:
            handle.write(text)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """`torch.save` through a temporary file, so a crash never leaves a truncated checkpoint."""
    import torch  # lazily: this module is also used by tools that never need torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch reports a failed write (a full disk) as a RuntimeError
            raise OSError(getattr(err, "errno", None) or 28, f"could not write {path} ({str(err).splitlines()[0][:120]})",
                          str(path)) from None


def _create_temp(path: Path) -> Path:
    # Not tempfile.mkstemp: it creates files with mode 0600, which the rename would then give to the final
    # file. os.open with 0o666 lets the user's umask decide, as for any ordinary file.
    # The leading dot keeps half-written files out of globs such as `*.json`.
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    # Without this, a power loss shortly after the rename can leave an empty file under the final name.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
