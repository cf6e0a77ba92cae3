"""The train-a-smaller-model baseline (``strategy=compress``): no pruning, a narrower network of the same
architecture with (1 - sparsity) of the dense prunable weights, trained from scratch for train.epochs +
finetune.epochs, optionally distilled from the dense model (the teacher). Every pruning result should beat it.
"""
from __future__ import annotations

import torch

from prune_cli.config import plain
from prune_cli.models import build_for
from prune_cli.pipeline.record import Round
from prune_cli.pruning.masks import prunable_names
from prune_cli.pruning.sparsity import model_sparsity
from prune_cli.training.loop import stage_seed
from prune_cli.training.settings import StageSettings

STAGE = "compress"


def plan(cfg, strategy, schedule, data) -> dict:
    """The width, the weights it keeps, and the epochs it trains (the schedule plays no part)."""
    model_cfg = plain(cfg.model)
    width = strategy.width(model_cfg, data.info, float(cfg.sparsity))
    return {"kind": "smaller_model", "width": width,
            "prunable_weights": strategy.prunable_count(model_cfg, data.info, width),
            "dense_prunable_weights": strategy.prunable_count(model_cfg, data.info, 1.0),
            "epochs": int(cfg.train.epochs) + int(cfg.finetune.epochs)}


def run(exp) -> None:
    state, record = exp.state, exp.record
    started = state.is_done(STAGE) or state.in_progress(STAGE)
    if started:  # the saved weights are the small model's; the teacher has its own copy
        exp.model.load_state_dict(state.extra["teacher"] if "teacher" in state.extra else state.extra["dense"])
    else:
        exp.restore_saved_weights(exp.model)
        state.extra["teacher"] = {k: v.detach().cpu().clone() for k, v in exp.model.state_dict().items()}
    teacher = exp.model
    facts = plan(exp.cfg, exp.strategy, exp.schedule, exp.facts)
    torch.manual_seed(stage_seed(exp.seed, STAGE))
    small, spec = build_for(plain(exp.cfg.model), exp.data.info, width=facts["width"])
    small.to(exp.device)
    if started:
        exp.restore_saved_weights(small)
    if not state.is_done(STAGE):
        settings = StageSettings.from_cfg(exp.cfg.train, epochs=facts["epochs"])
        loss_fn = exp.strategy.loss_fn(teacher)
        if loss_fn is None and exp.cfg.finetune.get("distill"):  # the small model's training is its fine-tune
            from prune_cli.training.distill import distillation_loss
            loss_fn = distillation_loss(teacher, float(exp.cfg.finetune.temperature), float(exp.cfg.finetune.alpha))
        extra = {"loss_fn": loss_fn} if loss_fn is not None else {}
        exp.fit(STAGE, settings, model=small, masks=None, **extra)
    exp.model, exp.spec, exp.masks = small, spec, None
    exp.prunable = prunable_names(small, exp.strategy.prune_classifier)
    test, val = exp.evaluate()
    record.set_accuracy("finetuned", test, val)
    kept = model_sparsity(small, exp.prunable)[2]
    record.compress = {"width": facts["width"], "dense_prunable_weights": facts["dense_prunable_weights"],
                       "prunable_weights": kept}
    record.rounds = [Round(round=1, target=float(exp.cfg.sparsity),
                           sparsity=1.0 - kept / facts["dense_prunable_weights"], accuracy=test, val_accuracy=val,
                           epochs=facts["epochs"], seconds=record.timings.get(STAGE, 0.0))]
    if not state.is_done(STAGE):
        state.boundary(STAGE, small, None)
