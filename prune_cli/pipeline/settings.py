"""The run's settings, typed: read once from the checked config (by the experiment and by the dry run), then
handed to the stages, which do not read the raw config for them.

What stays with the raw config: the dense cache key and the fingerprint (they hash the config itself, by
design), and what the last stage passes through to the report (measure, export, quantize, the config dump).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prune_cli.config import plain
from prune_cli.training.settings import StageSettings


@dataclass(frozen=True)
class Distillation:
    """``finetune.distill``: learn from the dense model's softened logits too (Hinton et al. 2015)."""
    temperature: float
    alpha: float


@dataclass(frozen=True)
class RunSettings:
    seed: int
    sparsity: float                  # the target
    model: dict                      # the model group as plain data: what builds the model
    model_name: str
    dataset_name: str
    train: StageSettings
    finetune: StageSettings
    finetune_on: str                 # shrunk | masked: what a structured result fine-tunes
    distillation: Optional[Distillation]
    eval_batch_size: int
    weights: Optional[str]           # trained dense weights to start from

    @classmethod
    def from_cfg(cls, cfg) -> "RunSettings":
        finetune = cfg.finetune
        return cls(seed=int(cfg.seed), sparsity=float(cfg.sparsity), model=plain(cfg.model),
                   model_name=str(cfg.model.get("name", cfg.model.get("_target_"))),
                   dataset_name=str(cfg.dataset.name),
                   train=StageSettings.from_cfg(cfg.train), finetune=StageSettings.from_cfg(finetune),
                   finetune_on=str(finetune.get("on", "shrunk")),
                   distillation=Distillation(float(finetune.temperature), float(finetune.alpha))
                   if finetune.get("distill") else None,
                   eval_batch_size=int(cfg.eval_batch_size),
                   weights=str(cfg.weights) if cfg.get("weights") else None)
