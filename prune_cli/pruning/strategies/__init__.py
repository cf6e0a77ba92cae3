"""Pruning strategies. A strategy only says how to *score*; turning scores into masks is shared (masks.py,
structure.py). Optional hooks let a strategy shape training before scoring (``prepare``) or replace the whole
prune-and-fine-tune path (``compress``)."""
from prune_cli.pruning.strategies.base import ScoringContext, Strategy

__all__ = ["ScoringContext", "Strategy"]
