"""Checking a run's config before any work: every key against the schema (``schema.py``), as plain data.

What relates several keys (a schedule's budget, a structured target's reachability, the smaller model's
width) is checked by the object that knows the relation, also before any training.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prune_cli.errors import UsageError
from prune_cli.schema import check_config


def validate(cfg: DictConfig) -> None:
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # e.g. an interpolation to a key that does not exist
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"config: {line}") from None
    from prune_cli.data import DATASETS
    check_config(plain, {name: registered.keys for name, registered in DATASETS.items()})
    method = (plain.get("quantize") or {}).get("name")
    from prune_cli.measure.quantized import REFUSED
    if method in REFUSED:
        raise UsageError(f"quantize={method}: not available: {REFUSED[method]}")
    from prune_cli.loggers import check as check_loggers
    check_loggers(plain.get("logger"))
