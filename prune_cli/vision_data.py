"""torchvision datasets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read from ``dataset.root``.

Files live in torchvision's own on-disk layout (``<root>/MNIST/raw/train-images-idx3-ubyte``,
``<root>/cifar-10-batches-py/data_batch_1``, ...), so a directory torchvision downloaded into works as is, and
``dataset.download=true`` uses torchvision's downloader. Offline with missing files is bad input: one line
naming the dataset, the directory and the files to put there.

Reading: MNIST-style idx files with torchvision's own reader (no checksum, as torchvision does). CIFAR's
pickles are read here, with the same layout as ``torchvision.datasets.CIFAR10``, without its md5 check and
through an unpickler that only rebuilds numpy arrays: the check costs a full read of 170 MB on every run and
rejects any file that is not the official one (tests generate their own), and a restricted unpickler means a
stray file in the data directory cannot run code.

Data paths (all give images in [0, 1], (N, C, H, W), labels long, batches already on the run's device):
- ``in_memory: true`` (default; all four sets fit): un-augmented splits are ``data.TensorSplit`` float
  tensors; a CIFAR training split with ``augment: true`` is an ``AugmentedSplit``: uint8 images on the device,
  converted per batch and randomly cropped (32, padding 4) and flipped with tensor ops, every draw taken from
  the epoch's generator, so a run (and a resumed run) sees the same augmented batches.
- ``in_memory: false``: ``LoaderSplit`` streams batches through a DataLoader with ``workers`` processes and
  only the current batch on the device; the same augmentation is applied to each batch on the device.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .data import DataInfo, Dataset, TensorSplit, _stratified_split
from .errors import UsageError

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


# ----------------------------------------------------------------------------------------------- the files

def _root(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.get("root", None) or "data")))


def _shown(path: Path) -> str:
    """The path as configured, with its absolute form when relative (runs may start from anywhere)."""
    return str(path) if path.is_absolute() else f"{path} (i.e. {path.resolve()})"


def missing_files(source: Source, root: Path) -> list[str]:
    folder = root / source.folder
    return [name for name in source.files if not (folder / name).is_file()]


def _check_root(source: Source, root: Path) -> None:
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
                                     f"{_first_line(err)}") from None
    elif source.archive and (root / source.archive).is_file() and missing_files(source, root):
        from torchvision.datasets.utils import extract_archive
        try:
            extract_archive(str(root / source.archive), str(root))
        except Exception as err:  # tarfile/OS errors: a broken archive is bad input, not a bug
            raise UsageError(f"dataset={source.name}: could not extract {root / source.archive}: "
                             f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
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
        return f"{type(err).__name__}: {_first_line(err)}"
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
    _check_root(source, root)
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


# ------------------------------------------------------------------------------------------------- readers

def _read_idx(source: Source, root: Path, images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file
    folder = root / source.folder
    x = _guarded(source, folder / images, read_image_file)
    y = _guarded(source, folder / labels, read_label_file)
    if len(x) != len(y):
        raise UsageError(f"dataset={source.name}: {folder / images} holds {len(x)} images but "
                         f"{folder / labels} {len(y)} labels")
    return x.unsqueeze(1).contiguous(), y.long()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, lists, dicts and strings only: a CIFAR batch needs nothing else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _load_cifar_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError("not a CIFAR batch (expected a dict)")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    labels = entry.get("labels", entry.get("fine_labels"))
    if "data" not in entry or labels is None:
        raise ValueError("not a CIFAR batch (no 'data' and 'labels'/'fine_labels')")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise ValueError(f"data of shape {data.shape} for {len(labels)} labels (expected (N, 3072))")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # channel-major, as the files store it
    return x, torch.as_tensor(list(labels), dtype=torch.long)


def _read_cifar(source: Source, root: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_guarded(source, root / source.folder / name, _load_cifar_batch) for name in files]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _guarded(source: Source, path: Path, reader):
    try:
        return reader(str(path))
    except PermissionError:
        raise UsageError(f"dataset={source.name}: cannot read {path}: permission denied") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, RuntimeError, AssertionError,
            pickle.UnpicklingError) as err:  # torchvision's idx reader asserts on a bad header
        raise UsageError(f"dataset={source.name}: could not read {path} ({_first_line(err)}); is it a "
                         f"complete, uncompressed file in torchvision's format?") from None


def read(source: Source, root: Path):
    """(x_train, y_train), (x_test, y_test) as uint8 (N, C, H, W) and long labels."""
    if source.kind == "idx":
        return (_read_idx(source, root, *source.train_files), _read_idx(source, root, *source.test_files))
    return _read_cifar(source, root, source.train_files), _read_cifar(source, root, source.test_files)


# -------------------------------------------------------------------------------------------------- splits

def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def augment(x: torch.Tensor, generator: Optional[torch.Generator], padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``padding``, same size) and horizontal flip of a batch, on its device.

    The same as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, per image, but done for the
    whole batch with one gather over the flattened padded images. Offsets and flips are drawn on the CPU from
    ``generator``, so the result does not depend on the device.
    """
    n, c, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = shifts[:, 0:1] + torch.arange(h, device=x.device)             # (n, h)
    cols = shifts[:, 1:2] + torch.arange(w, device=x.device)             # (n, w)
    if flip:
        flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


class AugmentedSplit:
    """An in-memory training split (uint8, on the run's device) with on-device augmentation.

    Same duck-typed API as ``data.TensorSplit``. Shuffled batches (training, and scoring that samples
    training batches) are augmented with draws from the given generator; ``shuffle=False`` yields the plain
    images in order.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int = 4, flip: bool = True):
        self.x, self.y, self.padding, self.flip = x, y, padding, flip

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "AugmentedSplit":
        return AugmentedSplit(self.x.to(device), self.y.to(device), self.padding, self.flip)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.y) // batch_size)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=generator).to(self.y.device) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield to_float(self.x[start:start + batch_size]), self.y[start:start + batch_size]
                continue
            index = order[start:start + batch_size]
            yield to_float(augment(self.x[index], generator, self.padding, self.flip)), self.y[index]


class _Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class LoaderSplit:
    """A split streamed through a DataLoader with ``workers`` processes; only one batch is on the device.

    For sets too large for the device. Images stay uint8 on the host until their batch is moved; the
    augmentation (training batches only) is the same on-device ``augment`` as ``AugmentedSplit``'s, drawn from
    the same generator, so both paths give the same kind of batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, workers: int = 2, augmented: bool = False,
                 device="cpu", padding: int = 4):
        self.x, self.y, self.workers, self.augmented = x, y, int(workers), augmented
        self.device, self.padding = torch.device(device), padding

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "LoaderSplit":
        return LoaderSplit(self.x, self.y, self.workers, self.augmented, device, self.padding)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.y) // batch_size)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            _Images(self.x, self.y), batch_size=batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.workers, pin_memory=cuda)
        for x, y in loader:
            x = x.to(self.device, non_blocking=cuda)
            if shuffle and self.augmented:
                x = augment(x, generator, self.padding)
            yield to_float(x), y.to(self.device, non_blocking=cuda)


# --------------------------------------------------------------------------------------------------- load

def _channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images in [0, 1] units, in float64 chunks."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares - count * mean * mean) / max(1, count - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _option(cfg, key: str, default):
    value = cfg.get(key, default)
    return default if value is None else value


def load(cfg) -> Dataset:
    """The dataset named by ``cfg.name``: standard train/test splits, optional validation carved from train."""
    name = str(cfg.name)
    if name not in SOURCES:
        raise UsageError(f"dataset={name}: unknown dataset; built-in: digits, synthetic, "
                         f"{', '.join(SOURCES)}")
    source = SOURCES[name]
    root = _root(cfg)
    ensure_files(source, root, bool(_option(cfg, "download", True)))
    (x_train, y_train), (x_test, y_test) = read(source, root)

    val_fraction = float(_option(cfg, "val_fraction", 0.0))
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"dataset.val_fraction={val_fraction}: must be in [0, 1)")
    x_val = y_val = None
    if val_fraction:
        try:
            train_idx, val_idx = _stratified_split(y_train, val_fraction, int(_option(cfg, "split_seed", 0)))
        except ValueError as err:
            raise UsageError(f"dataset.val_fraction={val_fraction}: cannot carve a stratified validation "
                             f"split from {len(y_train)} training images ({_first_line(err)})") from None
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]

    mean, std = _channel_stats(x_train)
    want_augment = _option(cfg, "augment", source.kind == "cifar")
    in_memory = bool(_option(cfg, "in_memory", True))
    notes = []
    if want_augment:
        notes.append("training batches augmented: random crop (padding 4) + horizontal flip")
    if in_memory:
        train = AugmentedSplit(x_train, y_train) if want_augment else TensorSplit(to_float(x_train), y_train)
        test = TensorSplit(to_float(x_test), y_test)
        val = TensorSplit(to_float(x_val), y_val) if x_val is not None else None
    else:
        workers = int(_option(cfg, "workers", 2))
        if workers < 0:
            raise UsageError(f"dataset.workers={workers}: must be a non-negative integer")
        train = LoaderSplit(x_train, y_train, workers, augmented=bool(want_augment))
        test = LoaderSplit(x_test, y_test, workers)
        val = LoaderSplit(x_val, y_val, workers) if x_val is not None else None
        notes.append(f"streamed through a DataLoader with {workers} workers")
    info = DataInfo(name, tuple(int(s) for s in x_train.shape[1:]), source.num_classes, mean, std)
    return Dataset(info, train, test, val, notes)
