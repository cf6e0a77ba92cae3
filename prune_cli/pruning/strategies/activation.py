"""Activation-based, structured criteria: prune the units that fire little.

Each unit's activation is taken where the network's own nonlinearity sees it: the layer's output, or, when a
batch norm reads that output directly (Conv -> BN -> ReLU in VGG and ResNet), the batch norm's output; then
passed through a ReLU and averaged over calibration batches of training data (all positions of a conv channel
count). ``activation`` keeps the units with the largest mean
|activation|; ``apoz`` keeps those with the smallest Average Percentage of Zeros (Hu et al. 2016).

An attention head's activation is its output, the features of the concatenated heads that the output
projection reads; nothing rectifies it, so ``activation`` takes its mean |value| there (the same for the
head's query, key and value rows, whose own outputs only meet inside the softmax). APoZ counts the zeros a
rectifier makes, which a head's output has none of, so ``apoz`` does not score heads: they all stay.
"""
from __future__ import annotations

import torch
from torch import nn

from prune_cli.training.evaluate import eval_mode
from prune_cli.pruning.masks import BATCH_NORMS
from prune_cli.schema import Int
from prune_cli.pruning.strategies.base import ScoringContext, Strategy


class _UnitStatistic(Strategy):
    structured = True

    config_schema = {"batches": Int(1, 1_000_000)}

    def __init__(self, batches: int = 8, scope: str = "layer", **kwargs):
        kwargs.pop("granularity", None)
        super().__init__(scope=scope, granularity="structured", **kwargs)
        self.batches = int(batches)

    def statistic(self, activation: torch.Tensor) -> torch.Tensor:
        """Per-unit sum over the batch (and positions) of some function of the activation (rectified, but for
        a head's output, which the network does not rectify)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, ctx: ScoringContext):
        modules = dict(ctx.model.named_modules())
        totals = {layer.name: torch.zeros(layer.num_units, dtype=torch.float64) for layer in ctx.unit_layers}
        counts = {layer.name: 0 for layer in ctx.unit_layers}
        batches = list(ctx.calibration_batches(self.batches))
        where = self._observed_modules(ctx, modules, batches[0][0]) if batches else {}
        heads: dict[str, list[str]] = {}  # {output projection: the head layers its input scores}
        for layer in ctx.unit_layers:
            if layer.group.attention is not None:
                heads.setdefault(layer.group.reader, []).append(layer.name)
        in_heads = {name for names in heads.values() for name in names}

        def hook_for(name):
            def hook(module, inputs, output):
                # (units, batch * positions): a Linear's units are its last dim (tokens come before it in a
                # transformer), a Conv's or batch norm's the channel dim.
                units = -1 if isinstance(module, nn.Linear) else 1
                rectified = output.relu().movedim(units, 0).flatten(1)
                totals[name] += self.statistic(rectified).double().cpu()
                counts[name] += rectified.shape[1]
            return hook

        def head_hook_for(names):
            def hook(module, inputs):
                features = inputs[0].movedim(-1, 0).flatten(1)  # (heads * head_dim, batch * tokens), not rectified
                statistic = self.statistic(features).double().cpu()
                for name in names:
                    totals[name] += statistic
                    counts[name] += features.shape[1]
            return hook

        handles = [modules[where.get(layer.name, layer.name)].register_forward_hook(hook_for(layer.name))
                   for layer in ctx.unit_layers if layer.name not in in_heads]
        handles += [modules[reader].register_forward_pre_hook(head_hook_for(names)) for reader, names in heads.items()]
        try:
            with eval_mode(ctx.model):
                for x, _ in batches:
                    ctx.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return {name: self.to_score(totals[name] / max(counts[name], 1)).float() for name in totals}

    @staticmethod
    def _observed_modules(ctx: ScoringContext, modules: dict, x: torch.Tensor) -> dict:
        """{unit layer: the batch norm that reads its output directly}, found on one forward pass by which
        tensor each batch norm receives (so a norm elsewhere in the network is never mistaken for it)."""
        outputs, found, handles = {}, {}, []
        layer_names = {layer.name for layer in ctx.unit_layers}

        def remember(name):
            def hook(module, inputs, output):
                outputs[id(output)] = (name, output)  # the tensor kept alive so its id stays its own
            return hook

        def match(name):
            def hook(module, inputs):
                source = outputs.get(id(inputs[0]))
                if source is not None and source[1] is inputs[0] and source[0] not in found:
                    found[source[0]] = name
            return hook

        for name, module in modules.items():
            if name in layer_names:
                handles.append(module.register_forward_hook(remember(name)))
            elif isinstance(module, BATCH_NORMS):
                handles.append(module.register_forward_pre_hook(match(name)))
        try:
            with eval_mode(ctx.model):
                ctx.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return found

    def to_score(self, mean: torch.Tensor) -> torch.Tensor:
        return mean


class Activation(_UnitStatistic):
    name = "activation"

    def statistic(self, rectified):
        return rectified.abs().sum(dim=1)


class APoZ(_UnitStatistic):
    name = "apoz"
    scores_heads = False

    def statistic(self, rectified):
        return (rectified == 0).sum(dim=1)

    def to_score(self, apoz):
        return 1.0 - apoz  # higher means keep: few zeros
