"""Per-example validation results of a finished run, for the search's paired comparisons.

A run's report holds its validation accuracy, not which images it got right; McNemar's test needs the
latter. They are measured again here from the run's own ``pruned.pt`` and dataset settings, and checked
against the report: a re-measurement that does not reproduce the reported accuracy is not used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def val_correct(run_dir: Path, report: dict) -> Optional[torch.Tensor]:
    """Whether each validation example is right for the run's final model (CPU bool tensor), or None when the
    run has no validation split or the re-measurement does not give the reported accuracy."""
    from omegaconf import OmegaConf

    from prune_cli.data import load_dataset
    from prune_cli.storage.checkpoint import load_checkpoint
    from prune_cli.storage.safe_load import safe_load
    from prune_cli.training.evaluate import correct
    path = Path(run_dir) / "pruned.pt"
    reported = (report.get("val_accuracy") or {}).get("finetuned")
    if reported is None or not path.exists():
        return None
    import torch
    config = safe_load(path).get("config") or {}
    data = load_dataset(OmegaConf.create(config["dataset"]))
    if data.val is None:
        return None
    # Measured as the run measured it: on its device (a GPU when there is one), in its precision and matmul
    # precision, so the count matches the report's.
    device = str((report.get("experiment") or {}).get("device") or "cpu")
    device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    # The run composed this model's config itself: its own target is as trusted as the run was.
    target = str((config.get("model") or {}).get("_target_", ""))
    model = load_checkpoint(path, map_location=device, trusted=(target,) if target else ())
    precision = report.get("precision") or {}
    from prune_cli.training.float32 import float32_arithmetic
    with float32_arithmetic(precision.get("matmul")):
        hits = correct(model, data.val.to(device), precision=precision.get("eval", "fp32"))
    # Batch composition can move a float by an ulp, never a prediction by a whole example on the same device;
    # a run measured on another device may differ, and is then left out rather than half-trusted.
    if abs(int(hits.sum()) - reported * len(hits)) > 0.5:
        return None
    return hits
