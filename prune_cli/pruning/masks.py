"""Masks: the one data type that crosses stage boundaries.

A mask is a 0/1 tensor per parameter, keyed by parameter name (``fc1.weight``). Unstructured strategies mask
prunable weights only; structured ones also mask the biases, norm parameters and next-layer inputs that belong
to a removed unit, so the masked model computes what the physically shrunk one does. Sparsity is always
counted over the prunable weights alone (see the glossary).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# torch's public layer classes (their common bases, _ConvNd and _BatchNorm, are private).
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONVOLUTIONS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def classifier_name(model: nn.Module) -> str:
    """The last Linear layer in module order: the one that produces the logits."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("model has no Linear layer to act as its classifier")
    return names[-1]


def prunable_names(model: nn.Module, include_classifier: bool = True) -> list[str]:
    """Names of the weights of Linear and Conv layers, in module order."""
    skip = None if include_classifier else classifier_name(model)
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES) and name != skip]


def prunable_for(model: nn.Module, strategy) -> tuple[list[str], list[str]]:
    """(prunable, ignored) weights of a model under a strategy's ``prune_classifier`` and ``ignore``: the one
    place that decides what a run may prune."""
    return split_ignored(prunable_names(model, include_classifier=strategy.prune_classifier), strategy.ignore)


def split_ignored(names: list[str], patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """(kept, ignored): a weight is ignored when a pattern matches all of its name (``fc1.weight``) or of its
    layer's (``fc1``). Every pattern must be a valid expression that matches something, and something must be
    left: a typo would otherwise prune what the user meant to keep."""
    import re

    from prune_cli.errors import UsageError
    patterns = list(patterns)
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise UsageError(f"strategy.ignore={patterns}: {pattern!r} is not a regular expression ({err})") \
                from None

    def hits(expr, name):
        return expr.fullmatch(name) is not None or expr.fullmatch(name.rpartition(".")[0]) is not None

    for pattern, expr in zip(patterns, compiled):
        if not any(hits(expr, name) for name in names):
            raise UsageError(f"strategy.ignore={patterns}: {pattern!r} matches none of the prunable weights "
                             f"({', '.join(names)}); patterns match a whole name")
    ignored = [name for name in names if any(hits(expr, name) for expr in compiled)]
    kept = [name for name in names if name not in ignored]
    if patterns and not kept:
        raise UsageError(f"strategy.ignore={patterns}: leaves no weight to prune")
    return kept, ignored


class Masks(dict):
    """``dict[name -> 0/1 float tensor]``, validated against the model it masks."""

    @classmethod
    def ones(cls, model: nn.Module, names: Iterable[str]) -> "Masks":
        params = dict(model.named_parameters())
        return cls({name: torch.ones_like(params[name]) for name in names})

    def validate(self, model: nn.Module) -> "Masks":
        params = dict(model.named_parameters())
        for name, mask in self.items():
            if name not in params:
                raise ValueError(f"mask for unknown parameter {name!r}")
            if mask.shape != params[name].shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, weight has {tuple(params[name].shape)}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"mask {name!r} holds values other than 0 and 1")
        return self

    def to(self, device) -> "Masks":
        return Masks({name: mask.to(device) for name, mask in self.items()})

    def cpu_state(self) -> dict[str, torch.Tensor]:
        """Plain dict of bool tensors: compact, and loadable with ``weights_only=True``."""
        return {name: mask.detach().to("cpu", torch.bool) for name, mask in self.items()}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], device="cpu") -> "Masks":
        return cls({name: mask.to(device=device, dtype=torch.float32) for name, mask in state.items()})

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the masked entries in place: called after every optimizer step, so no forward hooks are needed."""
        params = dict(model.named_parameters())
        for name, mask in self.items():
            params[name].mul_(mask)

    def intersect(self, other: "Masks") -> "Masks":
        """Masks only ever shrink: a weight pruned once stays pruned."""
        merged = Masks(self)
        for name, mask in other.items():
            merged[name] = mask * self[name] if name in self else mask
        return merged




def topk_masks(scores: Mapping[str, torch.Tensor], sparsity: float, scope: str = "global",
               previous: Masks | None = None, layer_rates: Mapping[str, float] | None = None) -> Masks:
    """Exact unstructured thresholding: zero the ``round(sparsity * n)`` lowest-scored entries.

    Ties are broken by position (earliest first over the concatenated scores, layers in the given order), so the
    result is deterministic. Entries already pruned in ``previous`` are ranked lowest, which keeps masks
    shrinking across rounds. ``scope="layer"`` applies the same fraction to every tensor; ``scope="row"`` too,
    and spreads each tensor's zeros evenly over its output rows (compared within each row, as Wanda does).

    ``layer_rates`` ({name: fraction}) sets some tensors' own sparsity (``round(fraction * size)`` zeros, or
    more when ``previous`` already zeroed more); the others share what is left of the total, so the total is
    still exactly ``round(sparsity * n)`` (``scope="layer"``: each of the others at that shared fraction).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer", "row"):
        raise ValueError(f"scope must be 'global', 'layer' or 'row', got {scope!r}")
    names = list(scores)
    device = next(iter(scores.values())).device if scores else torch.device("cpu")
    flat = {}
    for name in names:
        # On the scores' own device: l0 thresholds after every step, and a GPU round trip would stall it.
        score = scores[name].detach().float().flatten().to(device)
        if previous is not None and name in previous:
            # -inf keeps already-pruned weights at the bottom of the ranking.
            score = torch.where(previous[name].flatten().to(device) == 0,
                                torch.tensor(float("-inf"), device=device), score)
        flat[name] = score
    layer_rates = dict(layer_rates or {})
    for name in layer_rates:
        if name not in flat:
            raise ValueError(f"layer_rates names {name!r}, which is not scored")
    rest = [n for n in names if n not in layer_rates]
    goal = round(sparsity * sum(flat[n].numel() for n in names))
    wanted = {name: float(rate) * flat[name].numel() for name, rate in layer_rates.items()}
    counts = {name: round(z) for name, z in wanted.items()}
    if not rest and layer_rates:
        # Every tensor has its own rate: round them so that they add up to the total (largest remainders),
        # never below the zeros a tensor already has (masks only shrink) nor above its size.
        floors = {name: int(torch.isinf(flat[name]).sum()) for name in wanted}
        if sum(floors.values()) > goal:
            raise ValueError(f"the earlier masks already zero {sum(floors.values())} weights, more than the {goal} "
                             f"of this target; masks only shrink")
        counts = {name: max(floors[name], int(z)) for name, z in wanted.items()}
        short = goal - sum(counts.values())
        order = sorted(wanted, key=lambda n: wanted[n] - int(wanted[n]), reverse=True)
        while short > 0:  # add to the largest remainders first, round robin until the total is met
            grown = False
            for name in order:
                if short and counts[name] < flat[name].numel():
                    counts[name] += 1
                    short -= 1
                    grown = True
            if not grown:
                break
        for name in reversed(order):  # a floor above the rate: take the surplus back where a layer can give it
            while short < 0 and counts[name] > max(floors[name], 0) and counts[name] > wanted[name]:
                counts[name] -= 1
                short += 1
    fixed = {name: max(int(torch.isinf(flat[name]).sum()), k) for name, k in counts.items()}
    left = goal - sum(fixed.values())
    rest_size = sum(flat[n].numel() for n in rest)
    if not rest:
        left = 0  # the tensors' own counts are the total (they meet it whenever the rates add up to it)
    if left < 0 or left > rest_size:
        raise ValueError(f"the per-layer rates zero {sum(fixed.values())} weights, which cannot be completed to "
                         f"{goal} by the other {rest_size}")
    bottom = _bottom_k_rows if scope == "row" else lambda score, k, shape: _bottom_k_mask(score, k)
    out = {name: bottom(flat[name], k, scores[name].shape).view_as(scores[name]) for name, k in fixed.items()}
    if scope in ("layer", "row"):
        # Without per-layer rates every layer takes the target itself (as it always did); with them, the share.
        share = float(sparsity) if not fixed else (left / rest_size if rest_size else 0.0)
        for name in rest:
            k = round(share * flat[name].numel())
            if int(torch.isinf(flat[name]).sum()) > k:
                raise ValueError(f"{name} already has {int(torch.isinf(flat[name]).sum())} zeros, more than the "
                                 f"{k} this scope gives it; masks only shrink, so use strategy.scope=global")
            out[name] = bottom(flat[name], k, scores[name].shape).view_as(scores[name])
    elif rest:
        mask, start = _bottom_k_mask(torch.cat([flat[n] for n in rest]), left), 0
        for name in rest:
            out[name] = mask[start:start + flat[name].numel()].view_as(scores[name])
            start += flat[name].numel()
    return Masks({name: out[name] for name in names})


def _bottom_k_rows(score: torch.Tensor, k: int, shape) -> torch.Tensor:
    """Zero ``k`` entries of a weight, the same number in every output row (the first ``k % rows`` rows one
    more), each row's lowest scores (ties: earliest first)."""
    rows = score.view(int(shape[0]), -1)
    per_row = torch.full((rows.shape[0],), k // rows.shape[0], dtype=torch.long)
    per_row[: k % rows.shape[0]] += 1
    order = torch.sort(rows, dim=1, stable=True).indices
    positions = torch.arange(rows.shape[1], device=order.device).expand_as(order).contiguous()
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank >= per_row.to(rank.device)[:, None]).float().flatten()


def _bottom_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Zero the k lowest scores; among equal scores the earliest positions go first (a stable sort's order).

    A selection (kthvalue) instead of a full sort: about 5x faster, which matters for l0's projection after
    every optimizer step.
    """
    mask = torch.ones_like(score, dtype=torch.float32)
    if k <= 0:
        return mask
    if k >= score.numel():
        return mask.zero_()
    threshold = score.kthvalue(k).values
    below = score < threshold
    ties = score == threshold
    # The first k - #below of the ties by position, counted on the device: nothing here waits for the GPU
    # (l0 projects after every step).
    return mask.masked_fill_(below | (ties & (ties.cumsum(0) <= k - below.sum())), 0.0)


def round_layer_rates(layer_sparsity: Mapping[str, float], schedule_rates: Mapping[str, float] | None,
                      target: float, final: float) -> dict[str, float] | None:
    """The per-layer rates of a prune to ``target`` on the way to ``final``: a layer given its own final
    sparsity (``strategy.layer_sparsity``) reaches it in proportion to the schedule (exactly at the end);
    a rate the schedule sets (the lottery's output layer) applies where the strategy set none."""
    rates = dict(schedule_rates or {})
    scale = target / final if final else 0.0
    rates.update({name: rate * scale for name, rate in layer_sparsity.items()})
    return rates or None
