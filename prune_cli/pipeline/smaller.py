"""The train-a-smaller-model baseline (``strategy=compress``): no pruning, a narrower network of the same
architecture with (1 - sparsity) of the dense prunable weights, trained from scratch for train.epochs +
finetune.epochs, optionally distilled from the dense model (the teacher). Every pruning result should beat it.
"""
from __future__ import annotations

import torch

from prune_cli.models import build_for
from prune_cli.pipeline.outcome import Outcome
from prune_cli.pipeline.record import Round
from prune_cli.pipeline.stages import COMPRESS
from prune_cli.pruning.masks import prunable_names
from prune_cli.pruning.sparsity import model_sparsity
from prune_cli.training.loop import stage_seed
from prune_cli.storage.resume import cpu_copy



def plan(settings, strategy, schedule, data) -> dict:
    """The width, the weights it keeps, and the epochs it trains (the schedule plays no part)."""
    model_cfg = settings.model
    width = strategy.width(model_cfg, data.info, settings.sparsity)
    return {"kind": "smaller_model", "width": width,
            "prunable_weights": strategy.prunable_count(model_cfg, data.info, width),
            "dense_prunable_weights": strategy.prunable_count(model_cfg, data.info, 1.0),
            "epochs": settings.train.epochs + settings.finetune.epochs}


def run(exp, masks=None):
    """Train the smaller model (``masks`` plays no part: nothing is pruned); returns its Outcome."""
    state, record = exp.state, exp.record
    started = state.is_done(COMPRESS) or state.in_progress(COMPRESS.step)
    if started:  # the saved weights are the small model's; the dense model is kept as the teacher
        exp.model.load_state_dict(state.kept.teacher)
    else:
        exp.restore_saved_weights(exp.model)
        state.kept.teacher = cpu_copy(exp.model)
    teacher = exp.model
    facts = plan(exp.settings, exp.strategy, exp.schedule, exp.facts)
    torch.manual_seed(stage_seed(exp.seed, str(COMPRESS)))
    small, spec = build_for(exp.settings.model, exp.data.info, width=facts["width"])
    small.to(exp.device)
    if started:
        exp.restore_saved_weights(small)
    if not state.is_done(COMPRESS):
        settings = exp.settings.train.with_epochs(facts["epochs"])
        loss_fn = exp.strategy.loss_fn(teacher)
        distill = exp.settings.distillation
        if loss_fn is None and distill is not None:  # the small model's training is its fine-tune
            from prune_cli.training.distill import distillation_loss
            loss_fn = distillation_loss(teacher, distill.temperature, distill.alpha)
        extra = {"loss_fn": loss_fn} if loss_fn is not None else {}
        exp.fit(COMPRESS, settings, None, model=small, **extra)
    prunable = prunable_names(small, exp.strategy.prune_classifier)
    test, val = exp.evaluate(small)
    record.set_accuracy("finetuned", test, val)
    kept = model_sparsity(small, prunable)[2]
    record.compress = {"width": facts["width"], "dense_prunable_weights": facts["dense_prunable_weights"],
                       "prunable_weights": kept}
    record.rounds = [Round(round=1, target=exp.settings.sparsity,
                           sparsity=1.0 - kept / facts["dense_prunable_weights"], accuracy=test, val_accuracy=val,
                           epochs=facts["epochs"], seconds=record.timings.get(str(COMPRESS), 0.0))]
    if not state.is_done(COMPRESS):
        state.boundary(COMPRESS, small, None)
    return Outcome(small, spec, None, prunable)
