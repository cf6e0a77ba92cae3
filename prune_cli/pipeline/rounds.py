"""The rounds loop (one-shot, iterative, lottery): per round, score -> prune -> [rewind] -> fine-tune.

Masks only shrink: each round's masks are intersected with the last. A rewinding schedule (lottery tickets)
puts the surviving weights back to the rewind point, or draws fresh ones for the re-initialisation control,
before the round's training.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from prune_cli.models import build
from prune_cli.pipeline.record import Round
from prune_cli.pipeline.stages import CONTROL, CONTROL_PRUNE, Stage
from prune_cli.pruning.masks import Masks, classifier_name, round_layer_rates
from prune_cli.training.loop import stage_seed


def plan(settings, strategy, schedule, data) -> dict:
    """Every round's target and fine-tune epochs (``settings``: the run's RunSettings)."""
    targets = schedule.targets(settings.sparsity)
    epochs = schedule.epochs_per_round(settings.finetune.epochs, len(targets), settings.train.epochs)
    return {"kind": "rounds", "rewind": bool(schedule.rewind),
            "rounds": [{"round": i, "target": t, "finetune_epochs": e}
                       for i, (t, e) in enumerate(zip(targets, epochs), start=1)]}


def run(exp, masks: Optional[Masks] = None):
    """The rounds from ``masks`` (those of a loaded pruned.pt, or of the last saved stage); returns the Outcome."""
    exp.restore_saved_weights(exp.model)
    record, state = exp.record, exp.state
    steps = plan(exp.settings, exp.strategy, exp.schedule, exp.facts)["rounds"]
    for item in steps:
        index, target, epochs = item["round"], item["target"], item["finetune_epochs"]
        if not state.is_done(Stage.of_round(index, "prune")):
            masks = prune_round(exp, masks, index, target, epochs, steps[index - 2]["target"] if index > 1 else 0.0)
        finetune = Stage.of_round(index, "finetune")
        if not state.is_done(finetune):
            started = time.perf_counter()
            if epochs > 0:
                exp.finetune(finetune, exp.settings.finetune.with_epochs(epochs), masks)
            entry = record.rounds[index - 1]
            entry.accuracy, entry.val_accuracy = exp.evaluate()
            entry.sparsity = exp.achieved()
            entry.seconds += time.perf_counter() - started
            state.boundary(finetune, exp.model, masks)
    if exp.schedule.reinit:
        control(exp, masks, steps[-1]["finetune_epochs"])
        return exp.outcome(masks)
    last = record.rounds[-1]
    # One-shot: "pruned" is the accuracy right after pruning. With several rounds it is that of the last
    # prune, before its fine-tuning, which is what a reader comparing schedules wants.
    record.set_accuracy("pruned", last.accuracy_pruned, last.val_accuracy_pruned)
    record.pruned_at = ("after the last prune, before rewinding and retraining" if exp.schedule.rewind
                        else "after the last prune, before its fine-tuning")
    record.set_accuracy("finetuned", last.accuracy, last.val_accuracy)
    return exp.outcome(masks)


def prune_round(exp, masks: Optional[Masks], index: int, target: float, epochs: int, previous: float) -> Masks:
    """One round's [prepare ->] score -> prune [-> rewind]; returns the round's masks (recorded and saved)."""
    state, started = exp.state, time.perf_counter()
    prepare = Stage.of_round(index, "prepare")
    if not state.is_done(prepare):
        exp.strategy.prepare(exp.context(index, target, masks, previous))
        state.boundary(prepare, exp.model, masks)
    rates = None if exp.strategy.structured else round_layer_rates(
        exp.strategy.layer_sparsity, exp.schedule.layer_rates(target, _sizes(exp),
                                                              f"{classifier_name(exp.model)}.weight"),
        target, exp.settings.sparsity)
    masks = exp.prune_to(target, exp.context(index, target, masks), masks, share_scores=index == 1 and not rates,
                         layer_rates=rates)
    test, val = exp.evaluate()
    if exp.schedule.rewind:
        rewind(exp, masks)
    exp.record.rounds.append(Round(round=index, target=target, sparsity=exp.achieved(), accuracy_pruned=test,
                                   val_accuracy_pruned=val, epochs=epochs, seconds=time.perf_counter() - started,
                                   layers=exp.layer_sparsities(), masks=exp.round_masks(masks)))
    state.boundary(Stage.of_round(index, "prune"), exp.model, masks)
    return masks


def rewind(exp, masks: Masks) -> None:
    """Lottery tickets: surviving weights back to their initial (or rewind-epoch) values."""
    exp.model.load_state_dict(exp.state.kept.rewind)
    masks.apply_(exp.model)


def control(exp, masks: Masks, epochs: int) -> None:
    """The random re-initialisation control (Frankle & Carbin 2019): the ticket's final masks on freshly
    drawn weights, trained once for a round's length. Same masks, new weights: one extra training."""
    state, record = exp.state, exp.record
    if not state.is_done(CONTROL_PRUNE):
        torch.manual_seed(stage_seed(exp.seed, str(CONTROL)))
        exp.model.load_state_dict(build(exp.spec).to(exp.device).state_dict())
        masks.apply_(exp.model)
        record.set_accuracy("pruned", *exp.evaluate())
        record.pruned_at = "the final masks on freshly drawn weights, before training (the control)"
        state.boundary(CONTROL_PRUNE, exp.model, masks)
    if not state.is_done(CONTROL):
        if epochs > 0:
            exp.finetune(CONTROL, exp.settings.finetune.with_epochs(epochs), masks)
        record.set_accuracy("finetuned", *exp.evaluate())
        state.boundary(CONTROL, exp.model, masks)


def _sizes(exp) -> dict:
    params = dict(exp.model.named_parameters())
    return {name: params[name].numel() for name in exp.prunable}
