"""Units and their coupling: which parameter slices die with an output neuron or channel.

Removing unit j of a layer kills its weight row, its bias entry, the matching BatchNorm entries and the input
slices of every layer that reads it (after a Flatten, one Conv channel feeds many Linear columns). Layers whose
outputs are added together (residual shortcuts) must lose the same units, so they form one *group*, removed
together. Torch-Pruning's DependencyGraph finds all of this by tracing; here it becomes plain 0/1 masks, so a
masked model computes exactly what the physically shrunk one (``shrink.py``) computes.

Attention heads are units too, of a module that declares them (``HeadAttention`` does): its
``head_projections`` name the Linear layers whose output rows form heads ``head_dim`` at a time (query, key,
value) and the layer whose input columns read them (the output projection). A head's rows and columns go
together, and its query, key and value rows are scored as the head's mean. Torch-Pruning's tracing sees the
projections' outputs meet in the attention as if feature by feature, which would shrink heads instead of
removing them, so the declared heads replace that group.

Flow: ``unit_layers`` -> a strategy scores each layer's units -> ``select_units`` picks the units for a target
sparsity -> ``unit_masks`` turns them into masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from prune_cli.pruning.masks import BATCH_NORMS, CONVOLUTIONS, PRUNABLE_TYPES, Masks, classifier_name, prunable_names
from prune_cli.pruning.sparsity import zero_count
from prune_cli.errors import UsageError
from prune_cli.training.evaluate import eval_mode


@dataclass
class Coupling:
    """Slices of parameter ``param`` along ``dim``: ``unit[k]`` is the group unit owning slice k, or -1."""
    param: str
    dim: int
    unit: torch.Tensor


@dataclass
class UnitGroup:
    """Layers whose units are removed together. Units are numbered as the outputs of ``layers[0]``, or are
    the heads of the attention module ``attention`` (then ``head_dim`` outputs of each layer per unit)."""
    layers: list[str]
    num_units: int
    couplings: list[Coupling] = field(default_factory=list)
    reason: Optional[str] = None  # why its units cannot be removed exactly; None when they can
    attention: Optional[str] = None
    reader: Optional[str] = None  # heads: the layer whose input columns read them (the output projection)

    @property
    def name(self) -> str:
        return self.layers[0]


@dataclass
class UnitLayer:
    """A Linear/Conv layer whose output units can be removed (every such layer but the classifier)."""
    name: str
    weight_name: str
    num_units: int
    group: UnitGroup
    units: torch.Tensor  # the group unit of each of this layer's outputs (the identity unless coupled oddly)

    @property
    def coupling(self) -> list[Coupling]:
        return self.group.couplings


# Torch-Pruning node types that hold no parameters: a unit passes through them unchanged.
_PASS_THROUGH = ("ELEMENTWISE", "RESHAPE", "CONCAT", "SPLIT", "SLICE", "UNBIND", "EXPAND")




def dependency_graph(model: nn.Module, example_input: torch.Tensor):
    import torch_pruning as tp
    # Torch-Pruning traces through autograd, so it needs gradients on even when the caller is in no_grad.
    with eval_mode(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def out_pruning_fn(module: nn.Module):
    import torch_pruning as tp
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain(item) -> tuple[list[int], list[int]]:
    """(indices in the target, matching indices in the root). Torch-Pruning 1.6 hands out plain ints with a
    ``root_idxs`` attribute on the item, older releases ``_HybridIndex(idx, root_idx)`` tuples."""
    idxs = list(item.idxs)
    if idxs and hasattr(idxs[0], "root_idx"):
        return [int(i.idx) for i in idxs], [int(i.root_idx) for i in idxs]
    roots = getattr(item, "root_idxs", None)
    return [int(i) for i in idxs], [int(i) for i in (roots if roots is not None else idxs)]


def _param_slices(module: nn.Module, type_name: str, is_out: bool) -> tuple[list[tuple[str, int]], Optional[str]]:
    """Parameter slices of one group member, or why masking cannot reproduce its removal exactly."""
    if type_name in ("LINEAR", "CONV") and isinstance(module, PRUNABLE_TYPES):
        if isinstance(module, CONVOLUTIONS) and module.groups != 1:
            return [], "grouped or transposed convolution"
        if not is_out:
            return [("weight", 1)], None
        return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else []), None
    if type_name == "BN" and isinstance(module, BATCH_NORMS):
        return ([("weight", 0), ("bias", 0)] if module.affine else []), None
    # LayerNorm/GroupNorm statistics, PReLU slopes, bare parameters, model outputs: a zeroed unit would still
    # change what the rest of the layer computes, so only physical removal could be exact.
    return [], f"coupled to {type(module).__name__} ({type_name.lower()})"


def _build_group(graph, module: nn.Module, names: Mapping[nn.Module, str], head: str) -> UnitGroup:
    num_units = module.weight.shape[0]
    tp_group = graph.get_pruning_group(module, out_pruning_fn(module), idxs=list(range(num_units)))
    layers, reasons, slices = [], [], {}
    for item in tp_group.items:
        dep = item.dep
        target, type_name = dep.target.module, dep.target.type.name
        if type_name in _PASS_THROUGH:
            continue
        idxs, roots = _plain(item)
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        name = names.get(target, dep.target.name)
        if is_out and isinstance(target, PRUNABLE_TYPES):
            layers.append(name)
        params, reason = _param_slices(target, type_name, is_out)
        if reason:
            reasons.append(f"{name}: {reason}")
            continue
        if is_out and type_name in ("LINEAR", "CONV"):
            if name == head:
                reasons.append(f"{name}: coupled to the classifier's outputs")
            if sorted(idxs) != list(range(target.weight.shape[0])) or sorted(roots) != list(range(num_units)):
                reasons.append(f"{name}: only part of its outputs is coupled")
        for pname, dim in params:
            full = join_name(name, pname)
            unit = slices.get((full, dim))
            if unit is None:
                unit = slices[(full, dim)] = torch.full((getattr(target, pname).shape[dim],), -1, dtype=torch.long)
            unit[torch.tensor(idxs, dtype=torch.long)] = torch.tensor(roots, dtype=torch.long)
    order = {n: i for i, n in enumerate(names.values())}
    root = names[module]
    layers = [root] + sorted(set(layers) - {root}, key=order.__getitem__)  # the root first: it names the units
    couplings = [Coupling(p, d, u) for (p, d), u in slices.items()]
    return UnitGroup(layers, num_units, couplings, "; ".join(reasons) or None)


def head_group(module: nn.Module, name: str) -> Optional[UnitGroup]:
    """The heads of an attention module that declares them (see the module docstring), or None."""
    declared = getattr(module, "head_projections", None)
    if declared is None:
        return None
    head_dim = int(module.head_dim)
    projections = [getattr(module, p) for p in declared["heads"]]
    reader = getattr(module, declared["reader"])
    rows = projections[0].weight.shape[0]
    if (any(not isinstance(p, nn.Linear) or p.weight.shape[0] != rows for p in projections) or rows % head_dim
            or not isinstance(reader, nn.Linear) or reader.weight.shape[1] != rows):
        raise UsageError(f"{name}: declares attention heads, but {list(declared['heads'])} are not Linear layers of "
                         f"equal outputs, a multiple of head_dim={head_dim}, read by the Linear "
                         f"{declared['reader']!r}")
    unit = torch.arange(rows) // head_dim
    layers = [join_name(name, p) for p in declared["heads"]]
    couplings = [Coupling(join_name(layer, p), 0, unit) for layer, proj in zip(layers, projections)
                 for p in ("weight", "bias") if getattr(proj, p) is not None]
    reader_name = join_name(name, declared["reader"])
    couplings.append(Coupling(join_name(reader_name, "weight"), 1, unit))
    return UnitGroup(layers, rows // head_dim, couplings, attention=name, reader=reader_name)


def unit_groups(model: nn.Module, example_input: torch.Tensor, graph=None) -> list[UnitGroup]:
    """Every group of coupled Linear/Conv layers in module order, removable or not (``reason`` says why not),
    attention heads included.

    The classifier alone is no group: it never loses outputs."""
    graph = graph if graph is not None else dependency_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    head = classifier_name(model)
    groups, seen = [], set()
    for name, module in model.named_modules():
        heads = head_group(module, name)
        if heads is not None and any(model.get_submodule(layer) in graph.module2node for layer in heads.layers):
            # the attention module comes before its projections in module order, so they are not yet seen
            seen.update(heads.layers)
            groups.append(heads)
            continue
        if not isinstance(module, PRUNABLE_TYPES) or name in seen or module not in graph.module2node:
            continue  # not a unit layer, already in an earlier group, or unused by forward()
        group = _build_group(graph, module, names, head)
        seen.update(group.layers)
        if group.layers != [head]:
            groups.append(group)
    return groups


def unit_layers(model: nn.Module, example_input: torch.Tensor, groups: Optional[list[UnitGroup]] = None
                ) -> list[UnitLayer]:
    """The layers whose output units can be removed, in module order, each knowing its coupled group."""
    groups = groups if groups is not None else unit_groups(model, example_input)
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(modules)}
    layers = []
    for group in groups:
        if group.reason is not None:
            continue
        rows = {c.param: c.unit for c in group.couplings if c.dim == 0}
        for name in group.layers:
            weight = join_name(name, "weight")
            layers.append(UnitLayer(name, weight, modules[name].weight.shape[0], group, rows[weight]))
    return sorted(layers, key=lambda layer: order[layer.name])


def _groups_of(layers: Iterable[UnitLayer]) -> dict[str, UnitGroup]:
    return {layer.group.name: layer.group for layer in layers}


def sparing(layers: list[UnitLayer], names: Iterable[str]) -> list[UnitLayer]:
    """The unit layers whose units can go without zeroing any of ``names`` (weights left dense): a unit's
    removal also zeroes the input slices of the layers reading it, so those layers' producers stay whole."""
    names = set(names)
    return [layer for layer in layers if not any(c.param in names for c in layer.group.couplings)]


def _group_masks(groups: Mapping[str, UnitGroup], dead: Mapping[str, torch.Tensor],
                 params: Mapping[str, torch.Tensor]) -> Masks:
    """Masks zeroing every slice owned by a dead unit (``dead``: group name -> bool per group unit)."""
    masks = Masks()
    for name, gone in dead.items():
        if not bool(gone.any()):
            continue
        for c in groups[name].couplings:
            hit = (c.unit >= 0) & gone[c.unit.clamp(min=0)]
            if not bool(hit.any()):
                continue
            param = params[c.param]
            if c.param not in masks:
                masks[c.param] = torch.ones_like(param.detach(), dtype=torch.float32)
            masks[c.param].index_fill_(c.dim, hit.nonzero().flatten().to(param.device), 0.0)
    return masks


def _dead_by_group(layers: list[UnitLayer], removed: Mapping[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    by_name = {layer.name: layer for layer in layers}
    dead = {}
    for name, idxs in removed.items():
        if name not in by_name:
            raise ValueError(f"{name!r} is not a layer whose units can be removed; those are {sorted(by_name)}")
        layer = by_name[name]
        gone = dead.setdefault(layer.group.name, torch.zeros(layer.group.num_units, dtype=torch.bool))
        gone[layer.units[torch.as_tensor(list(idxs), dtype=torch.long)]] = True
    return dead


def unit_masks(model: nn.Module, example_input: torch.Tensor, removed: Mapping[str, Iterable[int]],
               layers: Optional[list[UnitLayer]] = None) -> Masks:
    """Masks zeroing everything that belongs to the removed units: weight rows, biases, BatchNorm entries and
    the input slices of the layers reading them. Removing a unit of one layer of a coupled group removes it
    from the whole group. Only touched parameters get a mask."""
    layers = layers if layers is not None else unit_layers(model, example_input)
    return _group_masks(_groups_of(layers), _dead_by_group(layers, removed), dict(model.named_parameters()))


def zeroed_weight_count(masks: Mapping[str, torch.Tensor], prunable: Iterable[str]) -> int:
    """How many entries of the named weights the masks zero."""
    return sum(zero_count(masks[n]) for n in prunable if n in masks)


def _zero_count(masks: Mapping[str, torch.Tensor], existing: Mapping[str, torch.Tensor],
                prunable: Iterable[str]) -> int:
    """Zeros of the intersection of two mask sets over the named weights, without building the merge."""
    zeros = 0
    for name in prunable:
        a, b = masks.get(name), existing.get(name)
        if a is None and b is None:
            continue
        keep = a if b is None else b if a is None else a * b.to(a.device)
        zeros += zero_count(keep)
    return zeros


def _removed_before(layers: list[UnitLayer], existing: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Units already removed: every member layer's weight row is masked to zero."""
    before = {}
    for layer in layers:
        mask = existing.get(layer.weight_name)
        rows_zero = ((mask.flatten(1) == 0).all(1).cpu() if mask is not None
                     else torch.zeros(layer.num_units, dtype=torch.bool))
        gone = before.setdefault(layer.group.name, torch.ones(layer.group.num_units, dtype=torch.bool))
        gone[layer.units[~rows_zero]] = False  # a head is gone only when all its rows are
    return before


def _group_scores(layers: list[UnitLayer], unit_scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One score per group unit: the mean over member layers (and over a head's rows) of each layer's scores
    divided by their mean magnitude, so layers of different scale (and the members of a coupled group)
    compare fairly."""
    sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in layers:
        if layer.name not in unit_scores:
            continue
        score = unit_scores[layer.name].detach().double().flatten().cpu()
        if score.numel() != layer.num_units:
            raise ValueError(f"{layer.name}: {score.numel()} scores for {layer.num_units} units")
        scale = score.abs().mean()
        score = score / scale if scale > 0 else score
        n = layer.group.num_units
        total, count = sums.setdefault(layer.group.name, (torch.zeros(n, dtype=torch.float64),
                                                          torch.zeros(n, dtype=torch.float64)))
        total.index_add_(0, layer.units, score)  # index_add: a head's rows all count, repeated indices too
        count.index_add_(0, layer.units, torch.ones_like(score))
    return {name: total / count.clamp(min=1) for name, (total, count) in sums.items()}


def select_units(unit_scores: Mapping[str, torch.Tensor], target_sparsity: float, model: nn.Module,
                 example_input: torch.Tensor, scope: str = "layer",
                 existing_masks: Optional[Mapping[str, torch.Tensor]] = None,
                 prunable: Optional[list[str]] = None, layers: Optional[list[UnitLayer]] = None
                 ) -> dict[str, list[int]]:
    """Remove the lowest-scored units until the zero fraction of the prunable weights is closest to
    ``target_sparsity`` (overshooting by at most one unit's weights). Returns {layer: sorted removed units}
    for every unit layer, coupled layers listing the same units.

    Zeros are counted exactly, input slices of later layers (the classifier's too) included. Units removed
    in ``existing_masks`` stay removed, a layer always keeps one unit, ties go by layer order then unit index.
    ``scope="layer"`` removes the same fraction of units from every group (to within one unit);
    ``scope="global"`` ranks all units by their score relative to their layer's mean score.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target_sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = layers if layers is not None else unit_layers(model, example_input)
    groups = _groups_of(layers)
    params = dict(model.named_parameters())
    prunable = list(prunable) if prunable is not None else prunable_names(model)
    existing = dict(existing_masks or {})
    before = _removed_before(layers, existing)
    scores = _group_scores(layers, unit_scores)

    # One ordered list of removal steps; any prefix of it is a candidate, so the search is over its length.
    steps = []  # (key, group position, rank in group, group name, unit)
    for position, (name, group) in enumerate(groups.items()):
        gone, n = before[name], group.num_units
        score = scores.get(name, torch.full((n,), float("inf"), dtype=torch.float64))
        ranked = torch.sort(torch.where(gone, float("-inf"), score), stable=True).indices.tolist()
        for rank, unit in enumerate(ranked[:n - 1]):  # the best unit always stays
            if gone[unit]:
                key = float("-inf")
            elif name not in scores:
                break  # unscored groups keep their remaining units
            else:
                key = float(score[unit]) if scope == "global" else (rank + 0.5) / n
            steps.append((key, position, rank, name, unit))
    steps.sort(key=lambda s: s[:3])

    def dead_after(count: int) -> dict[str, torch.Tensor]:
        dead = {name: torch.zeros(g.num_units, dtype=torch.bool) for name, g in groups.items()}
        for _, _, _, name, unit in steps[:count]:
            dead[name][unit] = True
        return dead

    def zeros(count: int) -> int:
        return _zero_count(_group_masks(groups, dead_after(count), params), existing, prunable)

    goal = target_sparsity * sum(params[n].numel() for n in prunable)
    low = sum(1 for s in steps if s[0] == float("-inf"))
    high = len(steps)
    while low < high:  # the longest prefix that stays at or under the goal
        mid = (low + high + 1) // 2
        if zeros(mid) <= goal:
            low = mid
        else:
            high = mid - 1
    best = low
    if low < len(steps) and abs(zeros(low + 1) - goal) < abs(zeros(low) - goal):
        best = low + 1  # one more unit lands closer to the target
    dead = dead_after(best)
    return {layer.name: sorted(i for i, u in enumerate(layer.units.tolist()) if dead[layer.group.name][u])
            for layer in layers}


def check_reachable(model: nn.Module, example_input: torch.Tensor, prunable: list[str], target: float,
                    strategy: str, model_name: str, layers: Optional[list[UnitLayer]] = None,
                    kept: str = "") -> None:
    """Whole-unit removal keeps one unit per layer: refuse a target beyond that, before any training.
    ``kept`` names what else stays whole (", every attention head"): then even a low target may be beyond."""
    if target < 0.5 and not kept:  # skipped below one half when every group may lose units (it costs a search)
        return
    layers = layers if layers is not None else unit_layers(model, example_input)
    scores = {layer.name: torch.ones(layer.num_units) for layer in layers}
    removed = select_units(scores, 0.999999, model, example_input, scope="global", prunable=prunable,
                           layers=layers)
    masks = unit_masks(model, example_input, removed, layers=layers)
    params = dict(model.named_parameters())
    reachable = zeroed_weight_count(masks, prunable) / sum(params[n].numel() for n in prunable)
    if target > reachable + 1e-9:
        raise UsageError(f"sparsity={target}: strategy={strategy} removes whole units and can reach at most "
                         f"{reachable:.4f} on model={model_name} (every layer keeps one unit, the classifier "
                         f"all its outputs{kept})")
