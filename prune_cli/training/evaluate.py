"""Top-1 accuracy, and the one eval-mode helper everything that runs a model outside training uses."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode (no batch-norm statistics updates, no dropout), then give every submodule back the
    mode it came in: a caller may hold a model whose parts are deliberately in different modes."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.inference_mode()
def evaluate(model: nn.Module, split, batch_size: int = 1024, precision: str = "fp32", shard: bool = False) -> float:
    """Top-1 accuracy on ``split``, in ``precision`` (the autocast of the training it follows); one host-device
    sync at the end. ``shard``: in a run across processes (torchrun), each rank counts its slice of every batch
    and the counts are summed, so the split is counted exactly once; every rank must call it."""
    import prune_cli.distributed as distributed
    from prune_cli.training.step import autocast
    shard = shard and distributed.active()
    correct, total = None, 0  # on the batches' device (an int8 model has no parameters to ask)
    with eval_mode(model):
        for x, y in split.batches(batch_size):
            if shard:
                x, y = distributed.shard(x, y)
            with autocast(x.device, precision):
                logits = model(x)
            hits = (logits.argmax(dim=1) == y).sum()
            correct = hits if correct is None else correct + hits
            total += len(y)
    if shard:
        # On the batches' device: this rank's own GPU under NCCL. A split with no batches has none on any rank,
        # and the CPU's collectives (gloo) serve every backend here.
        device = correct.device if correct is not None else torch.device("cpu")
        counts = torch.tensor([float(correct) if correct is not None else 0.0, float(total)], dtype=torch.float64,
                              device=device)
        correct, total = distributed.all_sum(counts).tolist()
    return float(correct) / total if total else 0.0


@torch.inference_mode()
def correct(model: nn.Module, split, batch_size: int = 1024, precision: str = "fp32") -> torch.Tensor:
    """Whether each example of ``split`` is classified right (a bool tensor on the CPU, in the split's order):
    what a paired comparison of two models on the same examples needs."""
    from prune_cli.training.step import autocast
    hits = []
    with eval_mode(model):
        for x, y in split.batches(batch_size):
            with autocast(x.device, precision):
                hits.append((model(x).argmax(dim=1) == y).cpu())
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
