"""Per-layer rates from layer-sensitivity curves (``prune-sensitivity``'s ``sensitivity.json``), for
``strategy.layer_sparsity=from_sensitivity:PATH``."""
from __future__ import annotations

import json
from pathlib import Path

from prune_cli.errors import UsageError


def allocate(result: dict, sizes: dict, target: float) -> dict:
    """Per-layer sparsities reaching ``target`` overall: each layer at the highest sparsity (linearly between
    its measured points, from 0 at the dense accuracy) whose validation drop stays under one threshold,
    the threshold found by bisection. Every prunable layer must have been measured."""
    dense = result["dense_val_accuracy"]
    curves = {name: sorted((float(s), dense - acc) for s, acc in points.items())
              for name, points in result["layers"].items() if name in sizes}
    missing = [name for name in sizes if name not in curves]
    if missing:
        raise UsageError(f"strategy.layer_sparsity=from_sensitivity: the analysis has no curve for {missing[0]} "
                         f"(run prune-sensitivity with this model and strategy settings)")

    def sparsity_at(points, threshold):
        best, previous = 0.0, (0.0, 0.0)
        for s, drop in points:
            if drop <= threshold:
                best = s
            else:
                s0, d0 = previous
                if d0 <= threshold < drop:  # the crossing between the last point within and this one
                    best = max(best, s0 + (s - s0) * (threshold - d0) / (drop - d0))
                break
            previous = (s, drop)
        return best

    total = sum(sizes.values())
    goal = target * total
    reach = lambda threshold: sum(sizes[n] * sparsity_at(p, threshold) for n, p in curves.items())
    high = max(d for p in curves.values() for _, d in p) + 1.0
    if reach(high) < goal:
        raise UsageError(f"sparsity={target}: the measured curves reach at most {reach(high) / total:.4f} (their "
                         f"highest sparsities); measure higher ones with sensitivity.sparsities")
    low = min(0.0, min(d for p in curves.values() for _, d in p)) - 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if reach(middle) < goal:
            low = middle
        else:
            high = middle
    # Whole zero counts that add up to the target's exactly (largest remainders), as rates. A curve that is not
    # monotone can make the total jump past the goal at the threshold: scale down to it, keeping the ratios.
    wanted = {name: sizes[name] * min(sparsity_at(points, high), 0.999999) for name, points in curves.items()}
    scale = round(goal) / sum(wanted.values()) if sum(wanted.values()) > round(goal) else 1.0
    wanted = {name: z * scale for name, z in wanted.items()}
    counts = {name: int(z) for name, z in wanted.items()}
    for name in sorted(wanted, key=lambda n: wanted[n] - counts[n], reverse=True)[:round(goal) - sum(counts.values())]:
        counts[name] += 1
    return {name: counts[name] / sizes[name] for name in curves}


def load(path) -> dict:
    """A sensitivity.json, checked (plain JSON: data, never code)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"strategy.layer_sparsity=from_sensitivity:{path}: cannot be read ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict) or \
            not isinstance(data.get("dense_val_accuracy"), (int, float)):
        raise UsageError(f"strategy.layer_sparsity=from_sensitivity:{path}: not a sensitivity.json")
    return data
