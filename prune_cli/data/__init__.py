"""Datasets: one registry from ``dataset.name`` to the loader that builds its splits.

Every dataset gives images in [0, 1], (N, C, H, W), and integer labels; a validation split, when asked for,
is carved out of the training split, never out of the test split.
"""
from __future__ import annotations

from prune_cli.errors import UsageError


def _digits(cfg):
    from prune_cli.data.builtin import load_digits
    return load_digits(cfg)


def _synthetic(cfg):
    from prune_cli.data.builtin import load_synthetic
    return load_synthetic(cfg)


def _torchvision(cfg):
    from prune_cli.data.torchvision_sets import load
    return load(cfg)


def _imagefolder(cfg):
    from prune_cli.data.own import load_image_folder
    return load_image_folder(cfg)


def _custom(cfg):
    from prune_cli.data.own import load_factory
    return load_factory(cfg)


# name -> loader(cfg) -> Dataset. The torchvision sets share one loader, which reads files.SOURCES.
DATASETS = {"digits": _digits, "synthetic": _synthetic, "mnist": _torchvision, "fashion_mnist": _torchvision,
            "cifar10": _torchvision, "cifar100": _torchvision, "imagefolder": _imagefolder, "custom": _custom}


def load_dataset(cfg):
    """The dataset named by ``cfg.name``."""
    name = str(cfg.name)
    if name not in DATASETS:
        raise UsageError(f"dataset={name}: unknown dataset; built-in: {', '.join(DATASETS)}")
    return DATASETS[name](cfg)
