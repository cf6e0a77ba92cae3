"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from ``dataset.root``, as splits in memory or streamed."""
from __future__ import annotations

from prune_cli.data.files import SOURCES, data_root, ensure_files, first_line as _first_line
from prune_cli.data.readers import read
from prune_cli.data.splits import AugmentedSplit, DataInfo, Dataset, LoaderSplit, TensorSplit, channel_stats, \
    stratified_split, to_float
from prune_cli.errors import UsageError


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
    root = data_root(cfg)
    ensure_files(source, root, bool(_option(cfg, "download", True)))
    (x_train, y_train), (x_test, y_test) = read(source, root)

    val_fraction = float(_option(cfg, "val_fraction", 0.0))
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"dataset.val_fraction={val_fraction}: must be in [0, 1)")
    x_val = y_val = None
    if val_fraction:
        try:
            train_idx, val_idx = stratified_split(y_train, val_fraction, int(_option(cfg, "split_seed", 0)))
        except ValueError as err:
            raise UsageError(f"dataset.val_fraction={val_fraction}: cannot carve a stratified validation "
                             f"split from {len(y_train)} training images ({_first_line(err)})") from None
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]

    mean, std = channel_stats(x_train)
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
