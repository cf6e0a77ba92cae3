"""Weight-based criteria: magnitude |w|, gradient saliency |w * dL/dw|, and the random baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prune_cli.training.evaluate import eval_mode
from prune_cli.schema import Int
from prune_cli.pruning.strategies.base import ScoringContext, Strategy, unit_norms


class Magnitude(Strategy):
    """|w| per weight; with ``granularity=structured`` the L1 norm of each unit (Li et al. 2017)."""
    name = "magnitude"

    def score(self, ctx: ScoringContext):
        params = dict(ctx.model.named_parameters())
        if self.structured:
            return unit_norms(ctx, {})
        return {name: params[name].detach().abs() for name in ctx.prunable}


class Random(Strategy):
    """Uniform random scores: the baseline every comparison needs."""
    name = "random"

    def score(self, ctx: ScoringContext):
        g = ctx.generator()
        params = dict(ctx.model.named_parameters())
        if self.structured:
            return {layer.name: torch.rand(layer.num_units, generator=g) for layer in ctx.unit_layers}
        return {name: torch.rand(params[name].shape, generator=g) for name in ctx.prunable}


class Gradient(Strategy):
    """First-order Taylor saliency |w * dL/dw|, summed over ``batches`` batches of *training* data."""
    name = "gradient"

    config_schema = {"batches": Int(1, 1_000_000)}

    def __init__(self, batches: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.batches = int(batches)

    def score(self, ctx: ScoringContext):
        model = ctx.model
        params = dict(model.named_parameters())
        saliency = {name: torch.zeros_like(params[name]) for name in ctx.prunable}
        with eval_mode(model):  # no batch-norm statistics updates while scoring
            for x, y in ctx.calibration_batches(self.batches):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                with torch.no_grad():
                    for name in ctx.prunable:
                        saliency[name] += (params[name] * params[name].grad).abs()
            model.zero_grad(set_to_none=True)
        if self.structured:
            return unit_norms(ctx, saliency)
        return saliency
