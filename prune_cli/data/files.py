"""torchvision datasets on disk: where each set's files live under ``dataset.root``, fetching what is missing.

Files live in torchvision's own on-disk layout (``<root>/MNIST/raw/train-images-idx3-ubyte``,
``<root>/cifar-10-batches-py/data_batch_1``, ...), so a directory torchvision downloaded into works as is, and
``dataset.download=true`` uses torchvision's downloader. Offline with missing files is bad input: one line
naming the dataset, the directory and the files to put there.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prune_cli.errors import UsageError

log = logging.getLogger("prune_cli")

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Source:
    """One torchvision dataset: where its files live under the root and what it holds."""
    name: str                 # the config name (dataset.name)
    folder: str               # directory under dataset.root holding the files
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    torchvision_class: str    # the torchvision.datasets class whose downloader fetches the files
    archive: Optional[str]    # a downloaded archive torchvision extracts into ``folder`` (CIFAR)
    kind: str                 # "idx" | "cifar"
    shape: tuple[int, int, int]
    num_classes: int
    sizes: tuple[int, int]    # standard train / test sizes

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


SOURCES = {
    "mnist": Source("mnist", "MNIST/raw", _IDX_FILES[:2], _IDX_FILES[2:], "MNIST", None, "idx",
                    (1, 28, 28), 10, (60000, 10000)),
    "fashion_mnist": Source("fashion_mnist", "FashionMNIST/raw", _IDX_FILES[:2], _IDX_FILES[2:],
                            "FashionMNIST", None, "idx", (1, 28, 28), 10, (60000, 10000)),
    "cifar10": Source("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), "CIFAR10", "cifar-10-python.tar.gz", "cifar", (3, 32, 32), 10,
                      (50000, 10000)),
    "cifar100": Source("cifar100", "cifar-100-python", ("train",), ("test",), "CIFAR100",
                       "cifar-100-python.tar.gz", "cifar", (3, 32, 32), 100, (50000, 10000)),
}


def data_root(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.get("root", None) or "data")))


def _shown(path: Path) -> str:
    """The path as configured, with its absolute form when relative (runs may start from anywhere)."""
    return str(path) if path.is_absolute() else f"{path} (i.e. {path.resolve()})"


def missing_files(source: Source, root: Path) -> list[str]:
    folder = root / source.folder
    return [name for name in source.files if not (folder / name).is_file()]


def check_root(source: Source, root: Path) -> None:
    if root.exists() and (not root.is_dir() or not os.access(root, os.R_OK | os.X_OK)):
        what = "not a directory" if not root.is_dir() else "not readable"
        raise UsageError(f"dataset={source.name}: dataset.root={_shown(root)} is {what}; point dataset.root "
                         f"(or PRUNE_CLI_DATA) at a readable directory holding {source.folder}/")
    folder = root / source.folder
    if folder.exists() and (not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK)):
        raise UsageError(f"dataset={source.name}: {_shown(folder)} is not a readable directory")


def _unpack_local(source: Source, root: Path) -> None:
    """Use archives already on disk without any network: ``*.gz`` idx files, or CIFAR's downloaded tarball."""
    folder = root / source.folder
    if source.kind == "idx":
        for name in missing_files(source, root):
            packed = folder / f"{name}.gz"
            if packed.is_file():
                try:
                    with gzip.open(packed, "rb") as src, open(folder / f".{name}.part", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(folder / f".{name}.part", folder / name)
                except (OSError, EOFError) as err:
                    raise UsageError(f"dataset={source.name}: could not decompress {packed}: "
                                     f"{first_line(err)}") from None
    elif source.archive and (root / source.archive).is_file() and missing_files(source, root):
        from torchvision.datasets.utils import extract_archive
        try:
            extract_archive(str(root / source.archive), str(root))
        except Exception as err:  # tarfile/OS errors: a broken archive is bad input, not a bug
            raise UsageError(f"dataset={source.name}: could not extract {root / source.archive}: "
                             f"{first_line(err)}") from None


def first_line(err: BaseException) -> str:
    """The most telling line of an exception: torchvision's download errors end with the real cause."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def _download(source: Source, root: Path) -> Optional[str]:
    """torchvision's downloader; returns why it failed (one line), or None."""
    import torchvision.datasets as tvd
    log.info("downloading %s into %s", source.name, root)
    try:
        # Constructing the dataset with download=True fetches (and checks the md5 of) the official files.
        getattr(tvd, source.torchvision_class)(str(root), train=True, download=True)
    except Exception as err:  # URLError/OSError/RuntimeError/tarfile errors: report, never a traceback
        return f"{type(err).__name__}: {first_line(err)}"
    return None


def _locked_download(source: Source, root: Path) -> Optional[str]:
    """One download at a time per root: jobs of a sweep starting together must not write the same files."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create {root}: {err.strerror}"
    from filelock import FileLock
    with FileLock(str(root / f".{source.name}.download.lock")):
        if not missing_files(source, root):  # another job fetched them while this one waited
            return None
        return _download(source, root)


def ensure_files(source: Source, root: Path, download: bool) -> None:
    """Make sure every file is on disk, or raise one line saying what to put where."""
    check_root(source, root)
    _unpack_local(source, root)
    missing = missing_files(source, root)
    if not missing:
        return
    failure = None
    if download:
        failure = _locked_download(source, root)
        missing = missing_files(source, root)
        if not missing:
            return
    if download:
        raise UsageError(missing_message(source, root, missing, failure or "files still missing"))
    raise UsageError(missing_message(source, root, missing))


def missing_message(source: Source, root: Path, missing: list[str], download_failure: Optional[str] = None) -> str:
    """One line: the dataset, the directory, the files to put there, and how else to get them."""
    where, need = _shown(root / source.folder), ", ".join(missing)
    if download_failure is not None:
        return (f"dataset={source.name}: download failed ({download_failure}) and files not found under {where} "
                f"(need {need}); put them there, e.g. copied from a machine with network access")
    return (f"dataset={source.name}: files not found under {where} (need {need}); put them there or set "
            f"dataset.download=true with network access")
