"""What a run may prune, decided once for the run and its dry run: the prunable and ignored weights, the unit
layers a structured strategy may remove units from, and the checks that the target can be reached."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prune_cli.pruning.masks import classifier_name, prunable_for
from prune_cli.pruning.sparsity import check_layer_sparsity, check_leaves_a_weight, model_sparsity


@dataclass
class Prunable:
    names: list[str]                 # weights that may be pruned (sparsity is counted over these)
    ignored: list[str]               # weights the strategy's ``ignore`` leaves dense
    unit_layers: list = field(default_factory=list)   # structured strategies: layers whose units may go


def prunable_of(model: nn.Module, example: torch.Tensor, strategy, schedule, sparsity: float,
                model_name: str) -> Prunable:
    """The run's ``Prunable``, after refusing (one line each) a target that leaves no weight, per-layer rates
    that do not fit, or a structured target beyond what whole-unit removal can reach."""
    names, ignored = prunable_for(model, strategy)
    params = dict(model.named_parameters())
    strategy.resolve_layer_sparsity({n: params[n].numel() for n in names}, sparsity)
    schedule.fit(model_name, {n: tuple(params[n].shape) for n in names}, f"{classifier_name(model)}.weight",
                 strategy_sets_rates=bool(strategy.structured or strategy.pattern is not None or strategy.loop
                                          or not strategy.takes_layer_rates or strategy.layer_sparsity))
    check_leaves_a_weight(sparsity, model_sparsity(model, names)[2], model_name)
    check_layer_sparsity(strategy, names, dict(model.named_parameters()), sparsity, schedule,
                         f"{classifier_name(model)}.weight")
    if strategy.pattern is not None:
        check_pattern(model, names, strategy, schedule, sparsity)
    layers = []
    if strategy.structured:
        from prune_cli.pruning.units import check_reachable, sparing, unit_layers
        layers = sparing(unit_layers(model, example), ignored)
        kept = ""
        if not strategy.scores_heads and any(layer.group.attention is not None for layer in layers):
            layers = [layer for layer in layers if layer.group.attention is None]
            kept = ", every attention head"
        check_reachable(model, example, names, sparsity, strategy.name, model_name, layers=layers, kept=kept)
    return Prunable(names, ignored, layers)


def check_pattern(model: nn.Module, names: list[str], strategy, schedule, sparsity: float) -> None:
    """An N:M pattern fixes the sparsity (1 - N/M), needs every pruned layer's input size to be a multiple of
    M, and leaves no room for per-layer rates."""
    from prune_cli.errors import UsageError
    from prune_cli.pruning.patterns import input_size
    pattern = strategy.pattern
    if abs(sparsity - pattern.sparsity) > 1e-9:
        raise UsageError(f"sparsity={sparsity}: strategy.pattern={pattern} keeps {pattern.n} of every {pattern.m} "
                         f"weights, so the sparsity is {pattern.sparsity:g}; set sparsity={pattern.sparsity:g}")
    params = dict(model.named_parameters())
    for name in names:
        if input_size(params[name].shape) % pattern.m:
            raise UsageError(f"strategy.pattern={pattern}: {name} has {input_size(params[name].shape)} inputs, not "
                             f"a multiple of {pattern.m}; leave it dense with strategy.ignore=[{name}]")
    sizes = {n: params[n].numel() for n in names}
    if strategy.layer_sparsity or schedule.layer_rates(sparsity, sizes, f"{classifier_name(model)}.weight"):
        raise UsageError(f"strategy.pattern={pattern}: every layer keeps {pattern.n} of {pattern.m}, so per-layer "
                         f"rates (strategy.layer_sparsity, schedule.classifier_rate) do not apply")
