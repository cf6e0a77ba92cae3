"""The gradual loop (Zhu & Gupta 2017): prune inside one fine-tuning run at the scheduled optimizer steps,
following the cubic sparsity ramp, then fine-tune at the final mask for the remaining steps."""
from __future__ import annotations

import time
from typing import Optional

from prune_cli.errors import UsageError
from prune_cli.pipeline.record import Round
from prune_cli.pipeline.stages import GRADUAL_FINETUNE, GRADUAL_PREPARE
from prune_cli.pruning.masks import Masks, round_layer_rates


def plan(settings, strategy, schedule, data) -> dict:
    """The fine-tune steps, and the steps pruning happens at with their targets (``settings``: RunSettings)."""
    final = settings.sparsity
    if schedule.initial_sparsity > final:
        raise UsageError(f"schedule.initial_sparsity={schedule.initial_sparsity}: above the target sparsity="
                         f"{final:g}; the ramp rises from the initial sparsity to the target, so it must be "
                         f"at most the target")
    finetune = settings.finetune
    total = finetune.epochs * data.train_batches(finetune.batch_size)
    steps = schedule.pruning_steps(total)
    return {"kind": "gradual", "steps": total,
            "prunes": [{"step": s, "target": schedule.sparsity_at(s, final, total)} for s in steps]}


def run(exp, masks: Optional[Masks] = None):
    state, record = exp.state, exp.record
    exp.restore_saved_weights(exp.model)
    if state.is_done(GRADUAL_FINETUNE):
        return exp.outcome(masks)
    settings = exp.settings.finetune
    prunes = {p["step"]: p["target"] for p in plan(exp.settings, exp.strategy, exp.schedule, exp.facts)["prunes"]}
    final = exp.settings.sparsity
    if not state.is_done(GRADUAL_PREPARE) and state.start_of(GRADUAL_FINETUNE)[0] == 0:
        # Sparsity-constrained training (l1, l0) runs once, before the gradual fine-tuning.
        exp.strategy.prepare(exp.context(0, final, masks))
        state.boundary(GRADUAL_PREPARE, exp.model, masks)

    def after_step(step: int):
        """At a scheduled step: prune to its target; the new masks go back to fit, which applies them."""
        nonlocal masks
        if step not in prunes:
            return None
        started = time.perf_counter()
        if record.rounds:
            record.rounds[-1].accuracy, record.rounds[-1].val_accuracy = exp.evaluate()
        target = prunes[step]
        index = len(record.rounds) + 1
        rates = round_layer_rates(exp.strategy.layer_sparsity, None, target, final)
        masks = exp.prune_to(target, exp.context(index, target, masks), masks, layer_rates=rates)
        test, val = exp.evaluate()
        record.rounds.append(Round(round=index, step=step, target=target, sparsity=exp.achieved(),
                                   accuracy_pruned=test, val_accuracy_pruned=val,
                                   seconds=time.perf_counter() - started, masks=exp.round_masks(masks)))
        return masks

    # Pruning happens inside this fine-tuning, so the model keeps its full size (and its masks) throughout.
    exp.note_finetuned(GRADUAL_FINETUNE, exp.model, "gradual pruning prunes during the fine-tuning")
    masks = exp.fit(GRADUAL_FINETUNE, settings, masks, after_step=after_step)
    last = record.rounds[-1]
    last.accuracy, last.val_accuracy = exp.evaluate()
    record.set_accuracy("pruned", last.accuracy_pruned, last.val_accuracy_pruned)
    record.pruned_at = "at the last prune step, during the fine-tuning"
    record.set_accuracy("finetuned", last.accuracy, last.val_accuracy)
    state.boundary(GRADUAL_FINETUNE, exp.model, masks)
    return exp.outcome(masks)
