"""What every strategy shares: its settings and the context it scores in.

The extension contract (docs/extending.md): a strategy is a subclass of ``Strategy`` whose constructor takes
its YAML's keys (with defaults) and whose ``score(ctx)`` returns, for every name in ``ctx.prunable``, a tensor
shaped like that weight, higher meaning keep. Turning scores into masks at exactly the target is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from prune_cli.pruning.masks import Masks
from prune_cli.schema import AnyOf, Bool, Choice, ListOf, MapOf, Null, Num, Text


@dataclass
class ScoringContext:
    """Everything a strategy may look at. ``train`` is the training split: scores never see test data."""
    model: nn.Module
    masks: Masks
    train: object
    prunable: list[str]
    device: torch.device
    seed: int
    round: int
    batch_size: int
    target: float = 0.0      # the cumulative sparsity this round prunes to
    previous_target: float = 0.0  # what the previous round pruned to (0 before the first)
    # fit(epochs=, stage=, regularizer=None, after_step=None) for strategies that train before scoring.
    fit: Optional[Callable] = None
    unit_layers: list = field(default_factory=list)

    def generator(self) -> torch.Generator:
        """A generator that depends only on (seed, round): scoring is reproducible and resumable."""
        return torch.Generator().manual_seed(self.seed * 7919 + self.round)

    def calibration_batches(self, count: int):
        """The first ``count`` shuffled training batches."""
        for i, batch in enumerate(self.train.batches(self.batch_size, shuffle=True, generator=self.generator())):
            if i >= count:
                break
            yield batch


class Strategy:
    """Base class. ``structured`` strategies score units (one value per output unit of each layer)."""
    name = "strategy"
    structured = False
    scores_heads = True  # structured: whether attention heads are among the units it scores
    # The config keys every strategy takes (subclasses add theirs; see prune_cli/schema.py).
    config_schema = {"scope": Choice(("global", "layer", "row")), "prune_classifier": Bool(),
                     "granularity": Choice(("unstructured", "structured")),
                     "layer_sparsity": AnyOf((MapOf(Num(0.0, 1.0, hi_open=True)), Null(),
                                              Text(r"from_sensitivity:.+", "from_sensitivity:PATH"))),
                     "ignore": AnyOf((ListOf(Text()), Null())),
                     "pattern": AnyOf((Text(r"\d+:\d+", "N:M, e.g. 2:4"), Null()))}
    # The pipeline loop this strategy needs instead of its schedule's (None: the schedule's). The
    # train-a-smaller-model baseline replaces pruning altogether.
    loop = None
    # Whether per-layer rates (strategy.layer_sparsity) apply: not for a strategy whose training already
    # thresholds the weights itself (l0 projects every step).
    takes_layer_rates = True
    # Whether pruning also changes the surviving weights (SparseGPT's reconstruction): such a strategy gives
    # its masks through ``reconstruct`` instead of scores.
    reconstructs = False
    # Whether the scores of a dense model depend on the target (a strategy that prunes while it scores, such
    # as sequential Wanda): such scores are never shared across sparsities through the cache.
    scores_depend_on_target = False

    def __init__(self, scope: str = "global", prune_classifier: bool = True, name: Optional[str] = None,
                 granularity: str = "unstructured", layer_sparsity: Optional[dict] = None,
                 ignore: Optional[list] = None, pattern: Optional[str] = None):
        self.scope = scope
        # N:M masks (N kept of every M consecutive inputs), or None for free unstructured masks.
        from prune_cli.pruning.patterns import NMPattern
        self.pattern = NMPattern.parse(pattern) if pattern else None
        # Regular expressions of weights (or their layers) left dense: not prunable, not counted in sparsity.
        self.ignore = [str(p) for p in (ignore or [])]
        # {weight name: final sparsity} for some layers; the others share the rest of the target. A
        # "from_sensitivity:PATH" string is turned into rates once the model is known (pipeline/prunable.py).
        self.layer_sparsity = layer_sparsity if isinstance(layer_sparsity, str) else dict(layer_sparsity or {})
        self.layer_sparsity_source = None
        self.prune_classifier = prune_classifier
        self.granularity = granularity
        if name:
            self.name = name
        if granularity == "structured":
            self.structured = True
        if scope == "row" and self.structured:
            raise ValueError(f"strategy.scope=row: compares weights within each output row; strategy={self.name} "
                             f"removes whole units (scope: layer or global)")
        if self.pattern is not None and self.structured:
            raise ValueError(f"strategy.pattern={pattern}: an N:M pattern masks single weights; "
                             f"strategy={self.name} removes whole units")

    def resolve_layer_sparsity(self, sizes: dict, sparsity: float) -> None:
        """Turn ``from_sensitivity:PATH`` into rates for these prunable weights ({name: size}) and target."""
        if isinstance(self.layer_sparsity, str):
            from prune_cli.pruning.allocation import allocate, load
            path = self.layer_sparsity.split(":", 1)[1]
            self.layer_sparsity = allocate(load(path), sizes, sparsity)
            self.layer_sparsity_source = f"from_sensitivity:{path}"

    @property
    def trains_before_scoring(self) -> bool:
        """Whether ``prepare`` changes the model before scoring (l1, l0): its scores then belong to this run
        alone and are never shared through the score cache. True whenever a class overrides ``prepare``."""
        return type(self).prepare is not Strategy.prepare

    def prepare(self, ctx: ScoringContext) -> None:
        """Train before scoring (sparsity-constrained strategies). Default: nothing. Across processes it runs on
        every rank; ``score`` and ``reconstruct`` run on rank 0 alone (no collectives in them)."""

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """Unstructured: {weight name: tensor shaped like the weight}. Structured: {layer name: (units,)}."""
        raise NotImplementedError(f"strategy {self.name!r} ({type(self).__name__}) does not define score(ctx)")

    def reconstruct(self, ctx: ScoringContext) -> Masks:
        """Prune to ``ctx.target`` and update the surviving weights (``reconstructs`` strategies only)."""
        raise NotImplementedError(f"strategy {self.name!r} does not reconstruct")

    def describe(self) -> dict:
        out = {"name": self.name, "scope": self.scope, "granularity": "structured" if self.structured
               else "unstructured", "prune_classifier": self.prune_classifier}
        if self.layer_sparsity:
            out["layer_sparsity"] = dict(self.layer_sparsity)
        if self.layer_sparsity_source:
            out["layer_sparsity_source"] = self.layer_sparsity_source
        if self.ignore:
            out["ignore"] = list(self.ignore)
        if self.pattern is not None:
            out["pattern"] = str(self.pattern)
        return out


def unit_norms(ctx: ScoringContext, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """L1 norm of each unit's incoming weights (rows of a Linear, output channels of a Conv)."""
    params = dict(ctx.model.named_parameters())
    out = {}
    for layer in ctx.unit_layers:
        weight = values.get(layer.weight_name, params[layer.weight_name].detach())
        out[layer.name] = weight.abs().flatten(1).sum(dim=1).float().cpu()
    return out
