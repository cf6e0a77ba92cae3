"""Run experiments from Python: ``prune_cli.run(overrides=[...])`` returns the report dict.

Composes the same config as ``prune-run`` (same overrides) and runs it in this process, which avoids a
process start per run when a script compares many configurations. The caller's process is left as it was
found: its standard streams, warning filters, garbage collector, torch's thread count and global random
state (``host_kept``).
"""
from __future__ import annotations

import contextlib
import gc
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from prune_cli.config import compose_config


@contextlib.contextmanager
def host_kept():
    """Whatever a run changes process-wide (``threads`` sets torch's thread count, stages seed the global
    generator, ``matmul_precision`` sets torch's, ``gpu_memory_fraction`` the GPU allocator's bound, libraries imported on the way may add warning filters) is put
    back afterwards. Not restorable: a compiled stage clears torch.compile's caches (``torch.compiler.reset``)."""
    import torch
    from prune_cli.training.float32 import float32_arithmetic
    streams, threads, collecting = (sys.stdout, sys.stderr), torch.get_num_threads(), gc.isenabled()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=cuda), float32_arithmetic():
            yield
    finally:
        sys.stdout, sys.stderr = streams
        torch.set_num_threads(threads)
        from prune_cli.pipeline.memory import GPU_MEMORY_BEFORE
        for index, fraction in GPU_MEMORY_BEFORE.items():  # gpu_memory_fraction's bound, where a run set one
            torch.cuda.set_per_process_memory_fraction(fraction, index)
        GPU_MEMORY_BEFORE.clear()
        (gc.enable if collecting else gc.disable)()


def run(overrides: Sequence[str] = (), run_dir: Optional[str] = None, progress=None,
        config_dir: Optional[str] = None) -> dict:
    """Run one experiment; outputs go to ``run_dir`` (default ``outputs/api/<time>``). ``config_dir`` is
    searched for config options before the package's own, like ``prune-run --config-dir``."""
    cfg = compose_config(overrides, config_dir=config_dir)
    if run_dir is None:
        run_dir = Path("outputs") / "api" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(run_dir)
    OmegaConf.resolve(cfg)
    with host_kept():
        from prune_cli.pipeline.experiment import Experiment
        return Experiment(cfg, run_dir, progress=progress, overrides=list(overrides)).run()
