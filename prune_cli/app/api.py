"""Run experiments from Python: ``prune_cli.run(overrides=[...])`` returns the report dict.

Composes the same config as ``prune-run`` (same overrides) and runs it in this process, which avoids a
process start per run when a script compares many configurations.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from prune_cli.config import compose_config


def run(overrides: Sequence[str] = (), run_dir: Optional[str] = None, progress=None,
        config_dir: Optional[str] = None) -> dict:
    """Run one experiment; outputs go to ``run_dir`` (default ``outputs/api/<time>``). ``config_dir`` is
    searched for config options before the package's own, like ``prune-run --config-dir``."""
    from prune_cli.pipeline.experiment import Experiment
    cfg = compose_config(overrides, config_dir=config_dir)
    if run_dir is None:
        run_dir = Path("outputs") / "api" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(run_dir)
    OmegaConf.resolve(cfg)
    import torch
    threads = torch.get_num_threads()
    try:
        return Experiment(cfg, run_dir, progress=progress).run()
    finally:
        torch.set_num_threads(threads)  # threads=auto sets it process-wide; give the caller theirs back
