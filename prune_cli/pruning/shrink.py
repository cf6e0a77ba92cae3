"""Physically remove zeroed units: a structured result becomes a genuinely smaller nn.Module.

``shrink`` works on a copy with the masks applied, drops every unit whose weight slices are all masked (its
rows and the input slices reading it, across its coupled group) with Torch-Pruning, and checks that the
smaller model computes what the masked one does. The returned ``info`` is plain data (it goes into
``report.json``); ``info["shapes"]`` is the spec ``rebuild_shrunk`` needs to make a fresh dense model take the
shrunk state dict.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn

from prune_cli.pruning.masks import BATCH_NORMS, CONVOLUTIONS, PRUNABLE_TYPES, Masks, classifier_name
from prune_cli.pruning.units import UnitGroup, join_name, dependency_graph, head_group, out_pruning_fn, unit_groups
from prune_cli.training.evaluate import eval_mode
from prune_cli.training.float32 import ieee_fp32


def _dead_units(group: UnitGroup, masks: Mapping[str, torch.Tensor], weights: set[str]) -> torch.Tensor:
    """Units all of whose Linear/Conv weight slices are masked. Requiring the input slices of the next layers
    too (not only the unit's own row) keeps removal exact whatever the unit outputs: a kept bias, or an
    activation with f(0) != 0, would otherwise leak a constant into the next layer."""
    dead = torch.ones(group.num_units, dtype=torch.bool)
    for c in group.couplings:
        if c.param not in weights:
            continue
        mask = masks.get(c.param)
        owned = c.unit >= 0
        if mask is None:
            alive = owned
        else:
            zero = (mask.detach().movedim(c.dim, 0).flatten(1) == 0).all(1).cpu()
            alive = owned & ~zero
        dead[c.unit[alive]] = False
    return dead


def _zero_rows(mask) -> int:
    return 0 if mask is None else int((mask.flatten(1) == 0).all(1).sum())


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The outputs the masked and smaller models are compared on, in IEEE float32 (TF32 on a GPU would move
    them by far more than the tolerance)."""
    with eval_mode(model), torch.no_grad(), ieee_fp32():
        return model(x)


def _matches(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> bool:
    out = _forward(model, x)
    scale = max(1.0, float(expected.abs().max()))
    return out.shape == expected.shape and bool(torch.allclose(out, expected, rtol=1e-4, atol=1e-5 * scale))


def _attention_of(modules: Mapping[str, nn.Module], name: str) -> Optional[UnitGroup]:
    """The head group whose first projection is layer ``name``, or None."""
    parent = name.rpartition(".")[0]
    heads = head_group(modules[parent], parent) if parent in modules else None
    return heads if heads is not None and heads.layers[0] == name else None


def _remove_heads(modules: Mapping[str, nn.Module], heads: UnitGroup, dead: torch.Tensor) -> None:
    """Torch-Pruning's layer pruners on the head's rows of each projection and its columns of the reader."""
    import torch_pruning as tp
    rows = (heads.couplings[0].unit.unsqueeze(1) == dead.nonzero().flatten()).any(1).nonzero().flatten().tolist()
    for layer in heads.layers:
        tp.prune_linear_out_channels(modules[layer], rows)
    tp.prune_linear_in_channels(modules[heads.reader], rows)


def _pruned_copy(masked: nn.Module, x: torch.Tensor, plan: Mapping[str, torch.Tensor]) -> nn.Module:
    small = copy.deepcopy(masked)
    graph = dependency_graph(small, x)
    modules = dict(small.named_modules())
    # All groups are resolved before any is pruned, so every index still refers to the unpruned layout.
    heads = {name: _attention_of(modules, name) for name in plan}
    todo = [graph.get_pruning_group(modules[name], out_pruning_fn(modules[name]), idxs=dead.nonzero().flatten().tolist())
            for name, dead in plan.items() if heads[name] is None]
    for group in todo:
        group.prune()
    for name, dead in plan.items():
        if heads[name] is not None:
            _remove_heads(modules, heads[name], dead)
    return small


def _removal_plan(model: nn.Module, masks: Masks, example_input: torch.Tensor):
    """(masked copy, its shrunk copy, {group: dead units} Torch-Pruning removes exactly, fallback [{layer,
    reason}], groups)."""
    masked = copy.deepcopy(model)
    masks.apply_(masked)
    groups = unit_groups(masked, example_input)
    weights = {join_name(n, "weight") for n, m in masked.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    plan, fallback = {}, []
    for group in groups:
        dead = _dead_units(group, masks, weights)
        if group.reason is not None or not bool(dead.any()):
            continue
        if bool(dead.all()):
            dead[0] = False
            fallback.append({"layer": group.name, "reason": "every unit is masked; one stays (masked) so the "
                                                            "layer still exists"})
        plan[group.name] = dead

    expected = _forward(masked, example_input)
    try:
        small = _pruned_copy(masked, example_input, plan)
        exact = _matches(small, example_input, expected)
    except Exception:  # noqa: BLE001 - any Torch-Pruning failure is handled below, group by group
        exact = False
    if not exact:
        # Find the groups Torch-Pruning gets wrong, one at a time, and leave only those masked.
        for name in list(plan):
            try:
                ok, why = _matches(_pruned_copy(masked, example_input, {name: plan[name]}), example_input,
                                   expected), "shrinking changed the outputs"
            except Exception as err:  # noqa: BLE001
                ok, why = False, f"torch-pruning failed: {type(err).__name__}: {err}"
            if not ok:
                fallback.append({"layer": name, "reason": why})
                del plan[name]
        small = _pruned_copy(masked, example_input, plan)
    return masked, small, plan, fallback, groups


def shrink(model: nn.Module, masks: Mapping[str, torch.Tensor], example_input: torch.Tensor
           ) -> tuple[nn.Module, dict]:
    """A smaller copy of ``model`` computing what ``model`` with ``masks`` applied computes.

    info: ``shapes`` {state-dict key: shape} (the rebuild spec), ``params`` (parameter count), ``units_kept``
    {layer: [kept, total]} for every Linear/Conv layer, ``heads_kept`` {attention: [kept, total]} for a model
    with declared attention heads, ``fallback`` [{layer, reason}] for layers with masked
    units that stay in place (masked) because removing them is impossible or would not be exact.
    """
    masks = Masks(masks).validate(model)
    masked, small, plan, fallback, groups = _removal_plan(model, masks, example_input)
    return small, _info(model, masked, small, masks, groups, fallback)


def _info(model, masked, small, masks, groups, fallback) -> dict:
    # Layers with fully masked rows that were not removed, and why, so a report can say what stays masked.
    fallback = list(fallback)
    reasons = {layer: g.reason for g in groups if g.reason for layer in g.layers}
    reasons[classifier_name(model)] = "the classifier keeps every output"
    listed = {entry["layer"] for entry in fallback}
    small_modules = dict(small.named_modules())
    units_kept = {}
    for name, module in masked.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        kept = small_modules[name].weight.shape[0]
        units_kept[name] = [int(kept), int(module.weight.shape[0])]
        if name in reasons and name not in listed and _zero_rows(masks.get(join_name(name, "weight"))):
            fallback.append({"layer": name, "reason": reasons[name]})
    info = {
        "shapes": {k: list(v.shape) for k, v in small.state_dict().items()},
        "params": int(sum(p.numel() for p in small.parameters())),
        "units_kept": units_kept,
        "fallback": fallback,
    }
    heads = {g.attention: [units_kept[g.layers[0]][0] // (units_kept[g.layers[0]][1] // g.num_units), g.num_units]
             for g in groups if g.attention is not None}
    if heads:
        info["heads_kept"] = heads
    return info


@dataclass
class Shrunk:
    """The smaller model a structured result fine-tunes (``finetune.on=shrunk``), tied to its full-size model.

    ``positions[key]``: for each state-dict entry the shrink made smaller, the flat index in the full-size
    tensor of every element of the small one; ``write_back`` puts the small model's values there, so the
    full-size model (and with it the masks, later rounds and the checkpoint) carries what was trained.
    ``masks``: what stays masked inside the small model (layers that could not shrink), or None.
    """
    model: nn.Module
    masks: Optional[Masks]
    positions: dict
    info: dict

    @torch.no_grad()
    def write_back(self, full: nn.Module) -> None:
        full_state = full.state_dict()
        for key, value in self.model.state_dict().items():
            target, where = full_state[key], self.positions.get(key)
            if where is None:
                target.copy_(value)
            else:
                target.view(-1)[where] = value.reshape(-1).to(target.dtype)


def shrink_for_training(model: nn.Module, masks: Mapping[str, torch.Tensor], example_input: torch.Tensor
                        ) -> Optional[Shrunk]:
    """The smaller model to fine-tune in place of masked ``model``, or None when no unit can be removed.

    Where each element of the small model came from is found by shrinking a float64 copy whose entries hold
    their own flat indices: whatever Torch-Pruning selects, the small copy then names. A check that gathering
    the masked model at those positions gives the small model exactly guards the mapping."""
    masks = Masks(masks).validate(model)
    masked, small, plan, fallback, groups = _removal_plan(model, masks, example_input)
    if not plan:
        return None
    # On the CPU (float64 everywhere, and no second model copy on the GPU); the positions then move back.
    tracer = copy.deepcopy(masked).cpu().to(torch.float64)
    with torch.no_grad():
        for value in tracer.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.arange(value.numel(), dtype=torch.float64).view_as(value))
    traced = _pruned_copy(tracer, example_input.detach().cpu().to(torch.float64), plan).state_dict()
    full_state, positions = masked.state_dict(), {}
    for key, value in small.state_dict().items():
        if value.shape == full_state[key].shape:
            continue
        where = traced[key].reshape(-1).long().to(value.device)
        if not torch.equal(full_state[key].reshape(-1)[where], value.reshape(-1)):
            raise RuntimeError(f"shrink: the positions of {key} do not reproduce the small model")
        positions[key] = where
    small_params = dict(small.named_parameters())
    left = Masks()
    for name, mask in masks.items():
        small_mask = mask.reshape(-1)[positions[name]].view_as(small_params[name]) if name in positions else mask
        if not bool(small_mask.all()):
            left[name] = small_mask
    return Shrunk(model=small, masks=left or None, positions=positions,
                  info=_info(model, masked, small, masks, groups, fallback))


def _resized(module: nn.Module, name: str, shapes: Mapping[str, list[int]]):
    """A fresh layer of the recorded size, or None when ``module`` already has it (or is not resizable)."""
    key = lambda p: join_name(name, p)  # noqa: E731
    if isinstance(module, nn.Linear) and key("weight") in shapes:
        out_f, in_f = shapes[key("weight")]
        if [out_f, in_f] == list(module.weight.shape):
            return None
        return type(module)(in_f, out_f, bias=module.bias is not None,
                            device=module.weight.device, dtype=module.weight.dtype)
    if isinstance(module, CONVOLUTIONS) and key("weight") in shapes:
        shape = shapes[key("weight")]
        if list(shape) == list(module.weight.shape):
            return None
        return type(module)(shape[1] * module.groups, shape[0], module.kernel_size, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            bias=module.bias is not None, padding_mode=module.padding_mode,
                            device=module.weight.device, dtype=module.weight.dtype)
    if isinstance(module, BATCH_NORMS):
        shape = shapes.get(key("weight")) or shapes.get(key("running_mean"))
        if shape is None or shape[0] == module.num_features:
            return None
        ref = module.weight if module.affine else module.running_mean
        return type(module)(shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats,
                            device=None if ref is None else ref.device)
    return None


def rebuild_shrunk(model: nn.Module, shapes: Mapping[str, list[int]]) -> nn.Module:
    """Resize the Linear, Conv and BatchNorm layers of a freshly built dense ``model`` (in place) to the
    shapes ``shrink`` recorded, so the shrunk state dict loads into it. Returns the model."""
    for name, module in list(model.named_modules()):
        new = _resized(module, name, shapes)
        if new is None:
            continue
        new.train(module.training)
        if not name:
            return new  # the model is itself a single layer
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
