"""Counting zeros: the one definition of sparsity (see the glossary) that every report number comes from.

A weight counts as zero when the tensor holds a zero there, or when a mask given with it does. Counting
always looks at the tensors themselves, so a weight that is zero for any reason is counted.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch


def check_leaves_a_weight(sparsity: float, total: int, model_name: str) -> None:
    """Exact thresholding zeroes round(sparsity * total) weights: refuse a target that would zero them all."""
    from prune_cli.errors import UsageError
    if round(float(sparsity) * total) >= total:
        raise UsageError(f"sparsity={sparsity}: would prune all {total:,} prunable weights of model={model_name}; "
                         f"at most {(total - 1) / total:.6f} leaves one")


def check_layer_sparsity(strategy, prunable: list, params: Mapping, sparsity: float, schedule=None,
                         classifier: Optional[str] = None) -> None:
    """Per-layer rates (``strategy.layer_sparsity``, and a schedule's own, such as the lottery's output-layer
    rate) name prunable weights of this model, suit the strategy, and leave the other layers a share of the
    target they can take; else one line saying why not. Checked before any training."""
    from prune_cli.errors import UsageError
    from prune_cli.pruning.masks import round_layer_rates
    rates = dict(strategy.layer_sparsity)
    if rates and (strategy.structured or strategy.loop is not None or not strategy.takes_layer_rates):
        raise UsageError(f"strategy.layer_sparsity: strategy={strategy.name} does not take per-layer rates (they "
                         f"need an unstructured strategy that thresholds once, after training)")
    unknown = [name for name in rates if name not in prunable]
    if unknown:
        raise UsageError(f"strategy.layer_sparsity: {unknown[0]} is not a prunable weight of this model; they are "
                         f"{', '.join(prunable)}")
    sizes = {n: params[n].numel() for n in prunable}
    own = schedule.layer_rates(sparsity, sizes, classifier) if schedule is not None and classifier \
        and not strategy.structured else None
    final = round_layer_rates(rates, own, sparsity, sparsity)
    if not final:
        return
    key = "strategy.layer_sparsity" if rates else "schedule.protocol"
    total = sum(sizes.values())
    fixed = sum(round(rate * sizes[n]) for n, rate in final.items())
    rest = total - sum(sizes[n] for n in final)
    if not rest and all(rate < 1.0 for rate in final.values()) and abs(sum(rate * sizes[n] for n, rate in
                                                                         final.items()) - sparsity * total) < 1:
        return  # every layer has its own rate: thresholding rounds them to the exact total (largest remainders)
    left = round(sparsity * total) - fixed
    if any(rate >= 1.0 for rate in final.values()) or left < 0 or left > rest or (left and not rest):
        goal = round(sparsity * total)
        need = ("a layer would have to lose every weight" if any(r >= 1.0 for r in final.values()) else
                f"the given layers alone zero {fixed:,} weights, more than the {goal:,} it allows" if left < 0 else
                f"the other layers would need {left:,} zeros of their {rest:,} weights" if rest else
                f"the given layers zero {fixed:,} of {total:,} weights where it needs {goal:,}")
        raise UsageError(f"{key}: cannot reach sparsity={sparsity}: {need}")


def zero_count(tensor: torch.Tensor, mask: Optional[torch.Tensor] = None) -> int:
    """Entries of ``tensor`` that are zero, or that ``mask`` zeroes."""
    tensor = tensor.detach()
    if mask is None:
        return tensor.numel() - int(torch.count_nonzero(tensor))
    return tensor.numel() - int(((tensor != 0) & (mask.to(tensor.device) != 0)).sum())


def weight_sparsity(tensors: Mapping[str, torch.Tensor], names: Iterable[str]) -> tuple[float, int, int]:
    """(fraction zero, zeros, total) over the named tensors (a state dict or ``dict(named_parameters())``)."""
    zeros = total = 0
    for name in names:
        zeros += zero_count(tensors[name])
        total += tensors[name].numel()
    return (zeros / total if total else 0.0), zeros, total


def model_sparsity(model: torch.nn.Module, names: Iterable[str]) -> tuple[float, int, int]:
    """``weight_sparsity`` over a model's parameters."""
    return weight_sparsity(dict(model.named_parameters()), names)


def param_counts(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, int]:
    """``{"total", "nonzero"}`` over all parameters; zeros counted from the weights (times the mask)."""
    masks = masks or {}
    total = nonzero = 0
    for name, param in model.named_parameters():
        total += param.numel()
        nonzero += param.numel() - zero_count(param, masks.get(name))
    return {"total": total, "nonzero": nonzero}
