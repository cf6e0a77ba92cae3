"""One fit() for every training phase: dense training, fine-tuning, constrained training.

The loop is deliberately plain: batches come from in-memory tensors, one ``TrainStep`` (training/step.py: the
precision, compiled or eager) re-applies the masks in place after each optimizer step (no forward hooks), and
nothing waits on the device inside an epoch. Per-step losses stay on the
device and are checked once per epoch, which finds the first non-finite step without a per-step sync.
"""
from __future__ import annotations

import time
import zlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.errors import RunFailed
from prune_cli.pruning.masks import Masks
from prune_cli.training.settings import StageSettings, load_optimizer_state, make_optimizer, set_lr
from prune_cli.training.step import TrainStep, prepare


def stage_seed(seed: int, stage: str) -> int:
    """Each stage draws its shuffles from its own seed, so resuming one stage does not shift another."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2 ** 31)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle order of an epoch depends only on (seed, epoch), so a resumed run replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def fit(model: nn.Module, train, settings: StageSettings, *, stage: str, seed: int,
        masks: Optional[Masks] = None,
        loss_fn: LossFn = cross_entropy,
        regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None,
        after_step: Optional[Callable[[int], Optional[Masks]]] = None,
        start_epoch: int = 0, optimizer_state: Optional[dict] = None, scaler_state: Optional[dict] = None,
        on_epoch_end: Optional[Callable[[int, torch.optim.Optimizer, Optional[Masks], Optional[torch.amp.GradScaler]],
                                        None]] = None,
        on_epoch_stats: Optional[Callable[[dict], None]] = None,
        on_compiled: Optional[Callable[[float], None]] = None,
        progress=None) -> Optional[Masks]:
    """Train ``model`` in place for ``settings.epochs`` epochs; returns the masks in force at the end.

    ``after_step(global_step)`` may return new masks (gradual pruning, hard-threshold projection); they are
    applied at once and used from then on. ``on_epoch_end(epoch, optimizer, masks, scaler)`` lets the pipeline
    save resumable state (``scaler``: fp16's gradient scaler, else None); a resumed stage passes ``start_epoch``,
    ``optimizer_state`` and ``scaler_state`` (the scaler's ``state_dict()``: its loss scale, without which the
    resumed steps would skip other updates than the uninterrupted run's);
    ``on_epoch_stats`` gets ``{"stage", "epoch", "epochs", "loss", "train_accuracy", "lr", "seconds"}`` after
    every epoch (the mean training loss of its steps, the share of its training examples the steps' own
    forward passes classified right, the epoch's lr and wall time); ``on_compiled(seconds)``, at the end of a
    compiled stage, the seconds its first calls took to compile.
    """
    prepare(model)
    optimizer = make_optimizer(model, settings)
    if optimizer_state is not None:
        load_optimizer_state(optimizer, optimizer_state)
    steps_per_epoch = train.num_batches(settings.batch_size)
    import prune_cli.distributed as distributed
    step = TrainStep(model, optimizer, loss_fn, settings.precision, settings.compile, regularizer,
                     forward=distributed.wrap(model))
    if scaler_state is not None and step.scaler is not None:
        step.scaler.load_state_dict(scaler_state)  # fills the scale in place: a compiled step keeps reading it
    ranks = distributed.world_size() if distributed.active() else 1
    step.use_masks(model, masks)
    model.train()
    task = progress.add_task(stage, total=settings.epochs, completed=start_epoch) if progress else None
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        set_lr(optimizer, settings.lr_at(epoch))
        step_losses, predicted, labels = [], [], []  # kept on the device; read once per epoch (no per-step sync)
        batches = train.batches(settings.batch_size, shuffle=True, generator=epoch_generator(seed, epoch))
        for i, (x, y) in enumerate(batches):
            weight, size = 1.0, len(y)
            if ranks > 1:  # this rank's slice of the global batch; the loss weighted so that DDP's average of
                x, y = distributed.shard(x, y)  # the ranks' gradients is the whole batch's mean
                weight = len(y) * ranks / size
            # Across processes a last batch too short to give every rank two examples is left out, on every
            # rank alike (an empty slice has no mean loss; one example breaks batch norm).
            if ranks == 1 or size >= 2 * ranks:
                try:
                    loss, predictions = step(x, y, weight)
                except RuntimeError as err:  # a huge lr (times Adam's bias correction) beyond float32's range
                    if "overflow" not in str(err):
                        raise
                    raise RunFailed(f"non-finite update in stage {stage!r} at epoch {epoch + 1}, step "
                                    f"{epoch * steps_per_epoch + i + 1}: lr {settings.lr_at(epoch):g} overflows "
                                    f"float32 (try a smaller lr)") from None
                step_losses.append(loss)
                predicted.append(predictions)
                labels.append(y)
            if after_step is not None:
                new_masks = after_step(epoch * steps_per_epoch + i + 1)
                if new_masks is not None:
                    masks = new_masks
                    step.use_masks(model, masks)
                    step.reapply()
        distributed.sync_buffers(model)  # one model on every rank before it is evaluated or saved
        if not step_losses:  # on every rank alike: each batch left out above
            raise RunFailed(f"stage {stage!r} made no training step in epoch {epoch + 1}: every batch has fewer "
                            f"than two examples per process ({ranks} processes)")
        losses = torch.stack(step_losses).float()
        right = (torch.cat(predicted) == torch.cat(labels)).sum().double().reshape(1)
        seen = total = sum(len(y) for y in labels)
        if ranks > 1:  # every rank sees the same epoch losses (each step's whole-batch loss), and stops alike
            losses = distributed.all_sum(losses) / ranks
            right = distributed.all_sum(right)
            total = int(distributed.all_sum(torch.tensor([seen], device=right.device)).item())
        _check_finite(losses, stage, epoch, steps_per_epoch)
        # The epoch's host-device sync (the finite check needs one anyway): its mean loss and accuracy.
        mean_loss, correct = torch.cat([losses.mean().double().reshape(1), right]).tolist()
        if task is not None:
            progress.update(task, advance=1, description=f"{stage} loss {mean_loss:.3f}")
        if on_epoch_stats is not None:
            stats = {"stage": stage, "epoch": epoch + 1, "epochs": settings.epochs, "loss": mean_loss}
            if total:
                stats["train_accuracy"] = correct / total
            on_epoch_stats({**stats, "lr": settings.lr_at(epoch), "seconds": time.perf_counter() - started})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, optimizer, masks, step.scaler)
    if task is not None:
        progress.remove_task(task)
    if on_compiled is not None and step.shapes:
        on_compiled(step.compile_seconds)
    return masks


def _check_finite(losses: torch.Tensor, stage: str, epoch: int, steps_per_epoch: int) -> None:
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        step = epoch * steps_per_epoch + first + 1
        raise RunFailed(f"non-finite loss in stage {stage!r} at epoch {epoch + 1}, step {step} "
                        f"(try a smaller lr)")
