"""The gradual loop (Zhu & Gupta 2017): prune inside one fine-tuning run at the scheduled optimizer steps,
following the cubic sparsity ramp, then fine-tune at the final mask for the remaining steps."""
from __future__ import annotations

import time

from prune_cli.pipeline.record import Round
from prune_cli.pruning.masks import round_layer_rates
from prune_cli.training.settings import StageSettings

STAGE = "gradual"


def plan(cfg, strategy, schedule, data) -> dict:
    """The fine-tune steps, and the steps pruning happens at with their targets."""
    settings = StageSettings.from_cfg(cfg.finetune)
    total = settings.epochs * data.train_batches(settings.batch_size)
    steps = schedule.pruning_steps(total)
    final = float(cfg.sparsity)
    return {"kind": "gradual", "steps": total,
            "prunes": [{"step": s, "target": schedule.sparsity_at(s, final, total)} for s in steps]}


def run(exp) -> None:
    state, record = exp.state, exp.record
    exp.restore_saved_weights(exp.model)
    if state.is_done(f"{STAGE}.finetune"):
        return
    settings = StageSettings.from_cfg(exp.cfg.finetune)
    prunes = {p["step"]: p["target"] for p in plan(exp.cfg, exp.strategy, exp.schedule, exp.facts)["prunes"]}
    final = float(exp.cfg.sparsity)
    if not state.is_done(f"{STAGE}.prepare") and state.start_of(f"{STAGE}.finetune")[0] == 0:
        # Sparsity-constrained training (l1, l0) runs once, before the gradual fine-tuning.
        exp.strategy.prepare(exp.context(0, final))
        state.boundary(f"{STAGE}.prepare", exp.model, exp.masks)

    def after_step(step: int):
        if step not in prunes:
            return None
        started = time.perf_counter()
        if record.rounds:
            record.rounds[-1].accuracy, record.rounds[-1].val_accuracy = exp.evaluate()
        target = prunes[step]
        index = len(record.rounds) + 1
        rates = round_layer_rates(exp.strategy.layer_sparsity, None, target, final)
        exp.masks = exp.prune_to(target, exp.context(index, target), layer_rates=rates)
        test, val = exp.evaluate()
        record.rounds.append(Round(round=index, step=step, target=target, sparsity=exp.achieved(),
                                   accuracy_pruned=test, val_accuracy_pruned=val,
                                   seconds=time.perf_counter() - started, masks=exp.round_masks()))
        return exp.masks

    # Pruning happens inside this fine-tuning, so the model keeps its full size (and its masks) throughout.
    exp.note_finetuned(f"{STAGE}.finetune", exp.model, "gradual pruning prunes during the fine-tuning")
    exp.fit(f"{STAGE}.finetune", settings, after_step=after_step)
    last = record.rounds[-1]
    last.accuracy, last.val_accuracy = exp.evaluate()
    record.set_accuracy("pruned", last.accuracy_pruned, last.val_accuracy_pruned)
    record.set_accuracy("finetuned", last.accuracy, last.val_accuracy)
    state.boundary(f"{STAGE}.finetune", exp.model, exp.masks)

