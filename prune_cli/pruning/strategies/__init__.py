"""Pruning strategies. A strategy only says how to *score*; turning scores into masks is shared
(``pruning/masks.py`` for weights, ``pruning/units.py`` for whole units). Optional hooks let a strategy train
before scoring (``prepare``), or replace pruning with a loop of its own (``Strategy.loop``: ``compress``)."""
from prune_cli.pruning.strategies.base import ScoringContext, Strategy

__all__ = ["ScoringContext", "Strategy"]
