"""Sharing the first scores of a dense model: a sweep over sparsities scores it once.

Scores of the first prune of a dense model do not depend on the target sparsity, so they are cached beside
the dense model, keyed by the dense entry, the strategy's settings, the seed, the prunable names and the
batch size (what ``ScoringContext`` hands the strategy). Later rounds, gradual pruning, and strategies that
train before scoring score a model no other run has: never shared.
"""
from __future__ import annotations

from prune_cli.config import plain
from prune_cli.pipeline.dense import run_cache
from prune_cli.storage.cache import cache_key


def _misfit(exp, scores) -> str | None:
    """Scores of other names or shapes than this run's (one per weight entry, or one per unit)."""
    params = dict(exp.model.named_parameters())
    expected = ({layer.name: (layer.num_units,) for layer in exp.unit_layers} if exp.strategy.structured
                else {name: tuple(params[name].shape) for name in exp.prunable})
    if not isinstance(scores, dict) or scores.keys() != expected.keys():
        return "its scores do not name this run's layers"
    wrong = [n for n, shape in expected.items() if tuple(getattr(scores[n], "shape", ())) != shape]
    return f"its scores for {wrong[0]} have another shape" if wrong else None


def first_round_scores(exp, ctx) -> dict:
    """The strategy's scores of the dense, unmasked model (the loop says when), from the cache when a run with
    the same dense model and strategy settings computed them."""
    dense_entry = exp.record.cache.get("key")  # across processes only rank 0 scores, so only it comes here
    if exp.strategy.trains_before_scoring or exp.strategy.scores_depend_on_target \
            or not dense_entry or not exp.cfg.cache.enabled:
        return exp.strategy.score(ctx)
    key = cache_key({"dense": dense_entry, "strategy": plain(exp.cfg.strategy), "seed": exp.seed,
                     "prunable": exp.prunable, "batch_size": ctx.batch_size})
    cache = run_cache(exp.cfg, kind="scores", required=("scores",))
    with cache.locked(key):
        entry = cache.load(key, check=lambda e: _misfit(exp, e["scores"]))
        if entry is None:
            scores = exp.strategy.score(ctx)
            cache.store(key, {"scores": {k: v.detach().cpu() for k, v in scores.items()}})
            exp.record.cache["scores"] = "computed"
            return scores
    exp.record.cache["scores"] = "reused"
    return {k: v.to(exp.device) for k, v in entry["scores"].items()}
