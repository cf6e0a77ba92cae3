"""Splits of image tensors in [0, 1], shaped (N, C, H, W), with integer labels, batched for training.

Small datasets live in memory (on the run's device when it is a GPU) and are batched by index: a DataLoader
over tiny tensors costs about 30% of a step on small models. Every split type has the same small API:
``len``, ``to(device)``, ``num_batches(batch_size)`` and ``batches(batch_size, shuffle, generator)``, whose
shuffle order depends only on the generator, so a resumed run replays the same batches.

- ``TensorSplit``: float tensors in memory.
- ``AugmentedSplit``: uint8 images on the device, converted per batch and randomly cropped (32, padding 4)
  and flipped with tensor ops, every draw taken from the epoch's generator.
- ``LoaderSplit``: streamed through a DataLoader with workers, only the current batch on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch


def batch_count(size: int, batch_size: int) -> int:
    """Batches of an epoch over ``size`` examples: the last one may be short."""
    return -(-int(size) // int(batch_size))


def split_sizes(size: int, fraction: float) -> tuple[int, int]:
    """(kept, held out) when ``fraction`` of ``size`` examples is held out, as ``stratified_split`` does it
    (scikit-learn rounds the held-out part up)."""
    if not fraction:
        return int(size), 0
    held_out = math.ceil(float(fraction) * int(size))
    return int(size) - held_out, held_out


@dataclass
class DataInfo:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class TensorSplit:
    """An in-memory split, batched by index with an explicit generator (so resumed runs reshuffle identically)."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "TensorSplit":
        return TensorSplit(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if shuffle:
            order = to_device(torch.randperm(n, generator=generator), self.y.device)
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                yield self.x[index], self.y[index]
        else:
            for start in range(0, n, batch_size):
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]

    def num_batches(self, batch_size: int) -> int:
        return batch_count(len(self.y), batch_size)


@dataclass
class Dataset:
    info: DataInfo
    train: TensorSplit
    test: TensorSplit
    val: TensorSplit | None = None
    notes: list[str] = field(default_factory=list)

    def to(self, device) -> "Dataset":
        move = lambda split: split.to(device) if split is not None and hasattr(split, "to") else split
        return Dataset(self.info, move(self.train), move(self.test), move(self.val), self.notes)


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of training images in [0, 1] units (uint8 images are read as
    value / 255), in float64 chunks; the model normalises with these."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64)
        if x.dtype == torch.uint8:
            part = part / 255.0
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares - count * mean * mean) / max(1, count - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices, sorted: exactly the sets scikit-learn's ``train_test_split(stratify=y,
    test_size=test_fraction, random_state=seed)`` gives (tests check it against scikit-learn), computed here
    because importing ``sklearn.model_selection`` costs about a second of every run's start-up."""
    import numpy as np
    labels = y.cpu().numpy()
    n = len(labels)
    n_test = math.ceil(float(test_fraction) * n)
    n_train = n - n_test
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"held out {n_test} of {n} samples leaves an empty split")
    if class_counts.min() < 2:
        raise ValueError("The least populated classes in y have only 1 member, which is too few")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"{min(n_train, n_test)} samples in a split is fewer than the {len(classes)} classes")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    in_train = _approximate_mode(class_counts, n_train, rng)
    in_test = _approximate_mode(class_counts - in_train, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: in_train[i]])
        test.extend(members[in_train[i]: in_train[i] + in_test[i]])
    return torch.as_tensor(sorted(train), dtype=torch.long), torch.as_tensor(sorted(test), dtype=torch.long)


def _approximate_mode(class_counts, n_draws: int, rng):
    """Samples per class when drawing ``n_draws``: the floor of each class's share, the rest given by largest
    remainder with ties broken by ``rng`` (scikit-learn's ``_approximate_mode``, the same draws)."""
    import numpy as np
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def carve_validation(train: TensorSplit, fraction: float, seed: int) -> tuple[TensorSplit, TensorSplit | None]:
    """A validation split comes out of the training data, never out of the test split."""
    if not fraction:
        return train, None
    train_idx, val_idx = stratified_split(train.y, fraction, seed)
    return TensorSplit(train.x[train_idx], train.y[train_idx]), TensorSplit(train.x[val_idx], train.y[val_idx])


def in_memory_dataset(name: str, x: torch.Tensor, y: torch.Tensor, train_idx, test_idx, num_classes: int,
               val_fraction: float, seed: int) -> Dataset:
    train = TensorSplit(x[train_idx], y[train_idx])
    train, val = carve_validation(train, val_fraction, seed)
    mean, std = channel_stats(train.x)
    info = DataInfo(name, tuple(x.shape[1:]), num_classes, mean, std)
    return Dataset(info, train, TensorSplit(x[test_idx], y[test_idx]), val)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor (an epoch's order or draws) on ``device``: on a GPU copied from pinned memory without
    waiting for the device (a pageable copy would wait for the queued steps first)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augmentation_draws(n: int, generator: Optional[torch.Generator], padding: int, flip: bool, device):
    """An epoch's crop offsets (n, 2) and flips (n,), drawn at once on the CPU from ``generator`` (so results do
    not depend on the device) and copied to ``device`` once, without waiting on it."""
    shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else None
    return to_device(shifts, device), to_device(flips, device) if flips is not None else None


def augment(x: torch.Tensor, shifts: torch.Tensor, flips: Optional[torch.Tensor], padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``padding``, same size) and horizontal flip of a batch, on its device, with
    the batch's draws (``augmentation_draws``).

    The same as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, per image, but done for the
    whole batch with one gather over the flattened padded images.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = shifts[:, 0:1] + torch.arange(h, device=x.device)             # (n, h)
    cols = shifts[:, 1:2] + torch.arange(w, device=x.device)             # (n, w)
    if flips is not None:
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
        return batch_count(len(self.y), batch_size)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if not shuffle:
            for start in range(0, n, batch_size):
                yield to_float(self.x[start:start + batch_size]), self.y[start:start + batch_size]
            return
        order = to_device(torch.randperm(n, generator=generator), self.y.device)
        shifts, flips = augmentation_draws(n, generator, self.padding, self.flip, self.y.device)
        for start in range(0, n, batch_size):
            index, part = order[start:start + batch_size], slice(start, start + batch_size)
            yield to_float(augment(self.x[index], shifts[part], flips[part] if flips is not None else None,
                                   self.padding)), self.y[index]


class _Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class LoaderSplit:
    """A split streamed through a DataLoader with ``workers`` processes; only one batch is on the device.

    For sets too large for the device (or for memory): ``source`` is either image tensors with their labels
    (``x``, ``y``: uint8 on the host until their batch is moved) or any map-style ``torch.utils.data.Dataset``
    of (image tensor, label) read from files as batches are drawn (``x`` the dataset, ``y`` None). The
    augmentation (training batches only) is the same on-device ``augment`` as ``AugmentedSplit``'s, drawn from
    the same generator, so both paths give the same kind of batches.
    """

    def __init__(self, x, y, workers: int = 2, augmented: bool = False, device="cpu", padding: int = 4):
        self.x, self.y, self.workers, self.augmented = x, y, int(workers), augmented
        self.device, self.padding = torch.device(device), padding

    def __len__(self) -> int:
        return len(self.x) if self.y is None else len(self.y)

    def to(self, device) -> "LoaderSplit":
        return LoaderSplit(self.x, self.y, self.workers, self.augmented, device, self.padding)

    def num_batches(self, batch_size: int) -> int:
        return batch_count(len(self), batch_size)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        source = self.x if self.y is None else _Images(self.x, self.y)
        loader = torch.utils.data.DataLoader(
            source, batch_size=batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.workers, pin_memory=cuda)
        for x, y in loader:
            x = x.to(self.device, non_blocking=cuda)
            if shuffle and self.augmented:  # the loader's batches are on the CPU until here: draws per batch
                x = augment(x, *augmentation_draws(len(x), generator, self.padding, True, self.device), self.padding)
            yield to_float(x), y.to(self.device, non_blocking=cuda)
