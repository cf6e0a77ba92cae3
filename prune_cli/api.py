"""Run experiments from Python: ``prune_cli.run(overrides=[...])`` returns the report dict.

Composes the same config as ``prune-run`` (same overrides) and runs it in this process, which avoids a
process start per run when a script compares many configurations.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from .cli import CONFIG_DIR


def compose_config(overrides: Sequence[str] = ()):
    """The composed run config (without Hydra's own settings), as ``prune-run`` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def run(overrides: Sequence[str] = (), run_dir: Optional[str] = None, progress=None) -> dict:
    """Run one experiment; outputs go to ``run_dir`` (default ``outputs/api/<time>``)."""
    from .pipeline import Experiment
    cfg = compose_config(overrides)
    if run_dir is None:
        run_dir = Path("outputs") / "api" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.resolve(cfg)
    import torch
    threads = torch.get_num_threads()
    try:
        return Experiment(cfg, run_dir, progress=progress).run()
    finally:
        torch.set_num_threads(threads)  # threads=auto sets it process-wide; give the caller theirs back
