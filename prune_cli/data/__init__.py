"""Datasets: one registry from ``dataset.name`` to the loader that builds its splits, the config keys it takes
and whether a process may keep it for the next job. Adding a dataset is an entry here (a torchvision set: an
entry in ``files.SOURCES``) and its YAML in ``conf/dataset/``.

Every dataset gives images in [0, 1], (N, C, H, W), and integer labels; a validation split, when asked for,
is carved out of the training split, never out of the test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from prune_cli.schema import CUSTOM_SET, DIGITS_SET, IMAGEFOLDER_SET, SYNTHETIC_SET, TORCHVISION_SET
from prune_cli.data.files import SOURCES
from prune_cli.errors import UsageError


def _digits(cfg):
    from prune_cli.data.builtin import load_digits
    return load_digits(cfg)


def _synthetic(cfg):
    from prune_cli.data.builtin import load_synthetic
    return load_synthetic(cfg)


def _synthetic_bytes(cfg):
    from prune_cli.data.builtin import synthetic_bytes
    return synthetic_bytes(cfg)


def _torchvision(cfg):
    from prune_cli.data.torchvision_sets import load
    return load(cfg)


def _imagefolder(cfg):
    from prune_cli.data.own import load_image_folder
    return load_image_folder(cfg)


def _custom(cfg):
    from prune_cli.data.own import load_factory
    return load_factory(cfg)


@dataclass(frozen=True)
class Registered:
    load: Callable      # loader(cfg) -> Dataset
    keys: dict          # the config keys it takes (prune_cli/schema.py's types)
    # Read from the package or from fixed files: a process that runs many jobs (a sweep's worker, a script
    # calling prune_cli.run) keeps the last one it loaded, keyed by its whole config. Runs never write to data.
    reusable: bool
    # Bytes the set takes in memory, from its config alone (checked before loading: pipeline/memory.py), and
    # the keys that set it; None where the files decide (they are streamed when large).
    nbytes: Optional[Callable] = None
    size_keys: tuple = ()


# The torchvision sets share one loader, which reads files.SOURCES.
DATASETS = {"digits": Registered(_digits, DIGITS_SET, True),
            "synthetic": Registered(_synthetic, SYNTHETIC_SET, True, _synthetic_bytes,
                                    ("train_size", "test_size", "shape")),
            **{name: Registered(_torchvision, TORCHVISION_SET, True) for name in SOURCES},
            "imagefolder": Registered(_imagefolder, IMAGEFOLDER_SET, False),
            "custom": Registered(_custom, CUSTOM_SET, False)}
_last: dict = {}


def load_dataset(cfg):
    """The dataset named by ``cfg.name``."""
    name = str(cfg.name)
    if name not in DATASETS:
        raise UsageError(f"dataset={name}: unknown dataset; built-in: {', '.join(DATASETS)}")
    if not DATASETS[name].reusable:
        return DATASETS[name].load(cfg)
    import json
    from omegaconf import DictConfig, OmegaConf
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg),
                     sort_keys=True, default=str)
    if key not in _last:
        _last.clear()
        _last[key] = DATASETS[name].load(cfg)
    return _last[key]
