"""The config resolvers prune-run's own YAML uses, registered before Hydra composes anything."""
from __future__ import annotations

import os
import re

from omegaconf import OmegaConf


def path_part(value) -> str:
    """A config value made safe to be part of a file name: no separators, no leading dot, not too long.
    ``strategy.name=/../../x`` becomes ``_.._.._x``, which stays inside the directory it is put in."""
    text = re.sub(r"[^A-Za-z0-9._+=,-]", "_", str(value))[:100]
    return "_" + text if text.startswith(".") or not text else text


def run_id() -> str:
    """This process's id: default run directories of runs started in the same second differ by it."""
    return str(os.getpid())


def register() -> None:
    OmegaConf.register_new_resolver("prune_cli.path_part", path_part, replace=True)
    OmegaConf.register_new_resolver("prune_cli.run_id", run_id, replace=True, use_cache=True)


register()
