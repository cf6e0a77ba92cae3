"""Sparsity-constrained training: an L1 penalty, or L0 by projection (iterative hard thresholding).

Both train before scoring (``prepare``); afterwards the weights are scored by magnitude and thresholded to
exactly the target by the shared masking code, then fine-tuned as usual.
"""
from __future__ import annotations

from prune_cli.pruning.masks import topk_masks
from prune_cli.schema import Int, Num
from prune_cli.pruning.strategies.base import ScoringContext, Strategy


class L1(Strategy):
    """Train with loss + ``l1`` * sum|w| over the prunable weights, so small weights go towards zero."""
    name = "l1"

    config_schema = {"l1": Num(0.0, 1.0), "epochs": Int(1, 100_000)}

    def __init__(self, l1: float = 1e-4, epochs: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.l1, self.epochs = float(l1), int(epochs)

    def prepare(self, ctx: ScoringContext) -> None:
        params = dict(ctx.model.named_parameters())
        weights = [params[name] for name in ctx.prunable]
        strength = self.l1

        def penalty(model):
            return strength * sum(w.abs().sum() for w in weights)

        ctx.fit(epochs=self.epochs, stage=f"round{ctx.round}.l1", regularizer=penalty)

    def score(self, ctx: ScoringContext):
        params = dict(ctx.model.named_parameters())
        return {name: params[name].detach().abs() for name in ctx.prunable}


class L0(Strategy):
    """min L(w) s.t. ||w||_0 <= k by iterative hard thresholding: after every optimizer step, keep the k
    largest |w| of *all* prunable weights and zero the rest.

    Nothing is fixed while k ramps: a weight zeroed by one projection still gets its gradient step and comes
    back as soon as it is among the k largest again (``reentries`` counts how often that happened). k ramps
    linearly from the previous round's target to this round's over ``ramp`` of the ``epochs`` epochs, then
    stays; the mask is only fixed after the last projection, by the shared thresholding of the scores
    (|w|), which then keeps exactly the weights the last projection kept. Weights pruned in earlier rounds
    stay pruned (masks only shrink across rounds).
    """
    name = "l0"
    takes_layer_rates = False

    config_schema = {"epochs": Int(1, 100_000), "ramp": Num(0.0, 1.0, lo_open=True)}

    def __init__(self, epochs: int = 5, ramp: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if self.pattern is not None:
            raise ValueError(f"strategy.pattern={self.pattern}: l0 projects onto the k largest weights of the whole "
                             f"model after every step; use magnitude, wanda or sparsegpt for N:M masks")
        self.epochs, self.ramp = int(epochs), float(ramp)
        self.projections = 0
        self.reentered = None  # a device tensor, summed step by step: reading it each step would wait on the GPU

    @property
    def reentries(self) -> int:
        """How often a weight zeroed by one projection was among the k largest again at the next."""
        return 0 if self.reentered is None else int(self.reentered)

    def prepare(self, ctx: ScoringContext) -> None:
        params = dict(ctx.model.named_parameters())
        # The ramp is a function of the step alone, from the previous round's target: a resumed run follows
        # the same one.
        start = ctx.previous_target
        steps_per_epoch = ctx.train.num_batches(ctx.batch_size)
        ramp_steps = max(1, int(self.ramp * self.epochs * steps_per_epoch))
        final = float(ctx.target)
        last = {}

        def project(step: int):
            level = start + (final - start) * min(1.0, step / ramp_steps)
            scores = {name: params[name].detach().abs() for name in ctx.prunable}
            masks = topk_masks(scores, level, self.scope, previous=ctx.masks).to(ctx.device)
            masks.apply_(ctx.model)  # the projection itself: nothing carries over to the next step
            for name, mask in masks.items():
                if name in last:
                    back = ((last[name] == 0) & (mask != 0)).sum()
                    self.reentered = back if self.reentered is None else self.reentered + back
                last[name] = mask
            self.projections += 1
            return None

        ctx.fit(epochs=self.epochs, stage=f"round{ctx.round}.l0", after_step=project)

    def score(self, ctx: ScoringContext):
        params = dict(ctx.model.named_parameters())
        return {name: params[name].detach().abs() for name in ctx.prunable}
