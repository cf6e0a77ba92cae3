"""Multiply-adds of one forward pass, counted by ``torch.utils.flop_counter``, dense and with zeros discounted."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from prune_cli.measure.inputs import example_input, model_device
from prune_cli.pruning.masks import CONVOLUTIONS, TRANSPOSED_CONVOLUTIONS
from prune_cli.pruning.sparsity import zero_count
from prune_cli.training.evaluate import eval_mode

# Layers whose multiply-adds shrink with their weights' sparsity (ShrinkBench's "theoretical" speed-up).
WEIGHTED_LAYERS = (nn.Linear, *CONVOLUTIONS, *TRANSPOSED_CONVOLUTIONS)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int],
                masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Multiply-adds (MACs) of one forward pass of a single example, dense and with zeros discounted.

    ``input_shape`` is one example's shape, e.g. ``(1, 28, 28)``. Returns
    ``{"dense", "nonzero", "theoretical_speedup", "layers": [{"name", "dense", "nonzero"}]}``.
    ``nonzero`` scales each Linear/Conv layer's MACs by the fraction of its weights that are non-zero
    (ShrinkBench's theoretical count); every other op (e.g. a bare matmul) is kept at its dense cost.
    ``theoretical_speedup`` is dense / nonzero, or None when nothing is left to compute.
    """
    from torch.utils.flop_counter import FlopCounterMode

    masks = masks or {}
    counter = FlopCounterMode(display=False)
    # Per-layer FLOPs are read as the change of the running total across each layer's forward, which needs
    # no knowledge of how FlopCounterMode names modules, and counts a layer called twice twice.
    layer_flops: dict[str, int] = {}
    started: dict[str, int] = {}
    handles = []
    layers = {name: module for name, module in model.named_modules() if isinstance(module, WEIGHTED_LAYERS)}
    for name, module in layers.items():
        def pre(_module, _args, name=name):
            started[name] = counter.get_total_flops()

        def post(_module, _args, _output, name=name):
            layer_flops[name] = layer_flops.get(name, 0) + counter.get_total_flops() - started.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with eval_mode(model), counter:
            model(example_input(model, input_shape, 1, model_device(model)))
    finally:
        for handle in handles:
            handle.remove()

    # FlopCounterMode counts a multiply-add as 2 FLOPs (matmul, conv); we report MACs, the unit pruning
    # papers use, so halve. Bias additions are not counted by it, consistently for dense and nonzero.
    dense = counter.get_total_flops() // 2
    per_layer = []
    saved = 0
    for name, module in layers.items():
        macs = layer_flops.get(name, 0) // 2
        weight = module.weight
        # A layer's MACs are (positions x weight elements), so this division is exact for Linear and Conv.
        nonzero = weight.numel() - zero_count(weight, masks.get(f"{name}.weight"))
        kept = macs * nonzero // weight.numel()
        saved += macs - kept
        per_layer.append({"name": name, "dense": macs, "nonzero": kept})
    nonzero = dense - saved
    return {
        "dense": dense,
        "nonzero": nonzero,
        # None rather than inf: it goes into report.json, and JSON has no infinity.
        "theoretical_speedup": dense / nonzero if nonzero else None,
        "layers": per_layer,
    }
