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
    check_leaves_a_weight(sparsity, model_sparsity(model, names)[2], model_name)
    check_layer_sparsity(strategy, names, dict(model.named_parameters()), sparsity, schedule,
                         f"{classifier_name(model)}.weight")
    layers = []
    if strategy.structured:
        from prune_cli.pruning.units import check_reachable, sparing, unit_layers
        layers = sparing(unit_layers(model, example), ignored)
        check_reachable(model, example, names, sparsity, strategy.name, model_name, layers=layers)
    return Prunable(names, ignored, layers)
