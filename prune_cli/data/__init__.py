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


# Sets read from the package or from fixed files: a process that runs many jobs (a sweep's worker, a script
# calling prune_cli.run) keeps the last one it loaded, keyed by its whole config. Runs never write to their data.
REUSABLE = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")
_last: dict = {}


def load_dataset(cfg):
    """The dataset named by ``cfg.name``."""
    name = str(cfg.name)
    if name not in DATASETS:
        raise UsageError(f"dataset={name}: unknown dataset; built-in: {', '.join(DATASETS)}")
    if name not in REUSABLE:
        return DATASETS[name](cfg)
    import json
    from omegaconf import DictConfig, OmegaConf
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg),
                     sort_keys=True, default=str)
    if key not in _last:
        _last.clear()
        _last[key] = DATASETS[name](cfg)
    return _last[key]
