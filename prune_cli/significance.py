"""When a difference is noise: the paired tests every choice and comparison uses.

- Two models on the same examples: McNemar's exact test on the examples exactly one of them gets right
  (``mcnemar``). A split of n examples resolves differences of 1/n; a difference the test cannot tell from
  chance (p >= ``ALPHA``) is a tie, whatever its sign.
- The same comparison repeated over seeds: the mean of the paired differences with its Student-t interval
  (``paired_interval``); an interval that contains 0 is a tie.
"""
from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

import torch

ALPHA = 0.05  # a difference is called one when p < ALPHA (two-sided), or when its 95% interval excludes 0


def mcnemar(a_correct: torch.Tensor, b_correct: torch.Tensor) -> dict:
    """McNemar's exact test of two models' per-example correctness on the same examples.

    Returns ``{"examples", "a_only", "b_only", "p_value", "difference"}``: the examples only A (only B) gets
    right, the two-sided binomial p-value of that split under "equally good", and A's accuracy minus B's."""
    from scipy.stats import binomtest
    if a_correct.shape != b_correct.shape:
        raise ValueError(f"paired results need the same examples: {tuple(a_correct.shape)} vs "
                         f"{tuple(b_correct.shape)}")
    a, b = a_correct.bool(), b_correct.bool()
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    n = int(a.numel())
    return {"examples": n, "a_only": a_only, "b_only": b_only, "p_value": p,
            "difference": (a_only - b_only) / n if n else 0.0}


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(0.5 + level / 2, df))


def paired_interval(differences: Sequence[float], level: float = 0.95) -> dict:
    """Mean of paired differences (one per seed) and its Student-t interval; ``tie`` when it contains 0, or when
    there are fewer than three pairs (one has no interval; two identical differences would give a zero-width
    one that claims far more than two samples can)."""
    values = [float(d) for d in differences]
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    half: Optional[float] = None
    if n > 1:
        half = t_quantile(n - 1, level) * statistics.stdev(values) / math.sqrt(n)
    low, high = (None, None) if half is None else (mean - half, mean + half)
    return {"n": n, "mean": mean, "low": low, "high": high,
            "tie": half is None or n < 3 or low <= 0.0 <= high}


def resolution(examples: int) -> float:
    """The smallest accuracy difference a split of ``examples`` can show: one example (a fraction)."""
    return 1.0 / examples if examples else math.nan
