"""What a loop hands to the last stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from prune_cli.pruning.masks import Masks


@dataclass
class Outcome:
    """What a loop produced: the final model (the dense one pruned in place, or a smaller one), its spec, its
    masks (None when nothing is masked) and the weights its sparsity is counted over."""
    model: nn.Module
    spec: dict
    masks: Optional[Masks]
    prunable: list[str]
