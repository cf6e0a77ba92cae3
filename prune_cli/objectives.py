"""What a sweeper optimises (``objective``): one number from a run's report, computed on validation data.

- ``val_accuracy``: the fine-tuned validation accuracy (maximise).
- ``sparsity_at_budget``: the achieved sparsity when the validation drop from dense is within
  ``objective_budget``, else minus the drop beyond it, so every run within the budget beats every run over it
  and sparser is better among them (maximise).

A run that failed, or has no validation split, gives NaN: Optuna records the trial as failed.
"""
from __future__ import annotations

import math

OBJECTIVES = ("val_accuracy", "sparsity_at_budget")


def objective_value(report, objective: str, budget: float = 0.01) -> float:
    val = (report or {}).get("val_accuracy") if isinstance(report, dict) else None
    if not val or val.get("finetuned") is None or report.get("status") != "completed":
        return math.nan
    if objective == "val_accuracy":
        return float(val["finetuned"])
    drop = float(val["dense"]) - float(val["finetuned"])
    return float(report["sparsity"]["achieved"]) if drop <= budget + 1e-12 else -(drop - budget)
