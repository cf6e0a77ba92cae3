"""N:M masks: the N highest-scored of every M consecutive weights along a layer's input dimension are kept.

This is the layout sparse tensor cores run (2:4 on NVIDIA Ampere and later): for a Linear weight (out, in) the
groups are M consecutive input features of each row; for a Conv weight (out, in, kh, kw) M consecutive input
channels at each (output channel, kernel position). Every group of the final masks holds exactly N non-zeros,
so the sparsity is exactly 1 - N/M of every pruned layer.

With several prunes (iterative, lottery, gradual), each prune zeroes a share of every group that grows with
the schedule's target and reaches M - N at the end; masks only shrink, so each group's zeros carry over.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from prune_cli.pruning.masks import Masks

PATTERN = re.compile(r"(\d+):(\d+)")


@dataclass(frozen=True)
class NMPattern:
    n: int   # kept per group
    m: int   # group size

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        match = PATTERN.fullmatch(str(text).strip())
        if not match or not 0 < int(match.group(1)) < int(match.group(2)):
            raise ValueError(f"strategy.pattern={text}: must be N:M with 0 < N < M (e.g. 2:4)")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def kept_at(self, target: float) -> int:
        """Non-zeros kept per group by a prune to ``target`` on the way to the pattern's own sparsity."""
        zeros = round((self.m - self.n) * min(1.0, target / self.sparsity))
        return self.m - zeros


def to_groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """(groups, m) view of a weight's entries, each row M consecutive inputs of one output (and kernel position)."""
    if tensor.dim() > 2:  # (out, in, *kernel) -> (out, *kernel, in): input channels innermost
        tensor = tensor.movedim(1, -1)
    return tensor.reshape(-1, m)


def from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() > 2:
        shape = (like.shape[0], *like.shape[2:], like.shape[1])
        return groups.reshape(shape).movedim(-1, 1).contiguous()
    return groups.reshape(like.shape)


def input_size(weight_shape) -> int:
    return int(weight_shape[1])


def nm_masks(scores: Mapping[str, torch.Tensor], pattern: NMPattern, kept: int,
             previous: Masks | None = None) -> Masks:
    """Keep the ``kept`` highest scores of every group of M (ties: the earliest position), never a weight that
    ``previous`` already removed."""
    out = {}
    for name, score in scores.items():
        score = score.detach().float()
        if previous is not None and name in previous:
            score = score.masked_fill(previous[name].to(score.device) == 0, float("-inf"))
        groups = to_groups(score, pattern.m)
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :kept]
        mask = torch.zeros_like(groups).scatter_(1, order, 1.0)
        if previous is not None and name in previous and bool(torch.isinf(groups.gather(1, order)).any()):
            raise ValueError(f"{name} already has more than {pattern.m - kept} zeros in a group of {pattern.m}, so "
                             f"it cannot keep {kept} of every {pattern.m}")
        out[name] = from_groups(mask, score)
    return Masks(out)
