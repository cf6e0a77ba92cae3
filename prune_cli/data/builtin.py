"""The two data sets every machine has: scikit-learn's bundled 8x8 digits, and a seeded synthetic set."""
from __future__ import annotations

import torch

from prune_cli.data.splits import Dataset, in_memory_dataset, stratified_split
from prune_cli.errors import UsageError


def digits_arrays():
    """(images (1797, 8, 8) with values 0..16, labels): the file ``sklearn.datasets.load_digits`` reads, read
    directly, since importing scikit-learn's dataset machinery costs about a second."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_digits(cfg) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no network), a fixed stratified split."""
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(target, dtype=torch.long)
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    return in_memory_dataset("digits", x, y, train_idx, test_idx, 10, cfg.get("val_fraction", 0.0), cfg.split_seed)


def synthetic_bytes(cfg) -> int:
    """The synthetic set's peak memory while it is built (float32): prototypes per image, the noise, and their
    clipped sum (``load_synthetic``); checked before building (``pipeline/memory.py``)."""
    import math
    return 3 * (int(cfg.train_size) + int(cfg.test_size)) * math.prod(int(s) for s in cfg.shape) * 4


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
    return in_memory_dataset("synthetic", x, y, train_idx, test_idx, classes, cfg.get("val_fraction", 0.0),
                      cfg.split_seed)
