"""Datasets as image tensors in [0, 1], shaped (N, C, H, W), with integer labels.

Small datasets live in memory (on the run's device when it is a GPU) and are batched by index: a DataLoader
over tiny tensors costs about 30% of a step on small models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .errors import UsageError


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
            order = torch.randperm(n, generator=generator).to(self.y.device)
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                yield self.x[index], self.y[index]
        else:
            for start in range(0, n, batch_size):
                yield self.x[start:start + batch_size], self.y[start:start + batch_size]

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.y) // batch_size)


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


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of training images; the model normalises with these."""
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.model_selection import train_test_split
    index = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, random_state=seed,
                                           stratify=y.numpy())
    return torch.as_tensor(sorted(train_idx)), torch.as_tensor(sorted(test_idx))


def _carve_validation(train: TensorSplit, fraction: float, seed: int) -> tuple[TensorSplit, TensorSplit | None]:
    """A validation split comes out of the training data, never out of the test split."""
    if not fraction:
        return train, None
    train_idx, val_idx = _stratified_split(train.y, fraction, seed)
    return TensorSplit(train.x[train_idx], train.y[train_idx]), TensorSplit(train.x[val_idx], train.y[val_idx])


def _in_memory(name: str, x: torch.Tensor, y: torch.Tensor, train_idx, test_idx, num_classes: int,
               val_fraction: float, seed: int) -> Dataset:
    train = TensorSplit(x[train_idx], y[train_idx])
    train, val = _carve_validation(train, val_fraction, seed)
    mean, std = channel_stats(train.x)
    info = DataInfo(name, tuple(x.shape[1:]), num_classes, mean, std)
    return Dataset(info, train, TensorSplit(x[test_idx], y[test_idx]), val)


def load_digits(cfg) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no network), a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = _stratified_split(y, cfg.test_fraction, cfg.split_seed)
    return _in_memory("digits", x, y, train_idx, test_idx, 10, cfg.get("val_fraction", 0.0), cfg.split_seed)


def load_synthetic(cfg) -> Dataset:
    """A seeded, learnable set: each class is a random prototype image plus noise, clipped to [0, 1]."""
    shape = tuple(int(s) for s in cfg.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"dataset.shape={list(cfg.shape)}: must be [channels, height, width] of positive sizes")
    classes = int(cfg.num_classes)
    if classes < 2:
        raise UsageError(f"dataset.num_classes={classes}: must be at least 2")
    g = torch.Generator().manual_seed(int(cfg.split_seed))
    prototypes = torch.rand(classes, *shape, generator=g)
    n = int(cfg.train_size) + int(cfg.test_size)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = (prototypes[y] + cfg.noise * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    train_idx, test_idx = torch.arange(int(cfg.train_size)), torch.arange(int(cfg.train_size), n)
    return _in_memory("synthetic", x, y, train_idx, test_idx, classes, cfg.get("val_fraction", 0.0),
                      cfg.split_seed)


LOADERS = {"digits": load_digits, "synthetic": load_synthetic}


def load_dataset(cfg) -> Dataset:
    """Dispatch on ``dataset.name``; torchvision datasets live in ``vision_data``."""
    name = cfg.name
    if name in LOADERS:
        return LOADERS[name](cfg)
    from . import vision_data
    return vision_data.load(cfg)
