"""``prune-compare --baseline NAME``: each strategy against a baseline strategy, paired by seed.

Two runs pair when every other group key (model, dataset, schedule, target sparsity, ...) and the seed are
the same; the difference of their fine-tuned accuracies is one sample. The mean of the samples and its
Student-t interval say whether the strategy differs from the baseline at all: an interval containing 0 is a
tie, not a small win.
"""
from __future__ import annotations

from collections.abc import Sequence

from prune_cli.comparison.summary import group_value, number, variant_labels
from prune_cli.errors import UsageError
from prune_cli.significance import paired_interval


def add_baseline(rows: list[dict], reports: Sequence[dict], by: Sequence[str], baseline: str) -> None:
    """Set ``row["vs_baseline"]`` ({strategy, n, mean, low, high, verdict}) on every row of another strategy."""
    if "strategy" not in by:
        raise UsageError(f"--baseline {baseline}: needs strategy among the --by keys (got {','.join(by)})")
    strategies = {group_value(r, "strategy") for r in reports}
    if baseline not in strategies:
        raise UsageError(f"--baseline {baseline}: no compared run has strategy={baseline}; they have "
                         f"{', '.join(sorted(map(str, strategies)))}")
    # A run repeated with the same config and seed counts once (as in the summary rows).
    reports = list({r.get("fingerprint") or id(r): r for r in reports}.values())
    labels = variant_labels(reports, by)
    others = [k for k in by if k not in ("strategy", "variant")]

    def label(report):
        variant = group_value(report, "variant")
        return labels.get(variant, variant) if labels else None

    def key(report):
        return tuple(group_value(report, k) for k in others) + (group_value(report, "seed"),)

    base: dict = {}
    for report in reports:
        if group_value(report, "strategy") == baseline:
            base.setdefault(key(report), []).append(report)

    def partner(report):
        """The baseline run of the same settings and seed: of the same variant where the baseline has several."""
        found = base.get(key(report), [])
        if len(found) > 1:
            found = [r for r in found if label(r) == label(report)]
        return found[0] if len(found) == 1 else None
    for row in rows:
        if row.get("strategy") == baseline:
            continue
        members = [r for r in reports if all(group_value(r, k) == row.get(k) for k in by if k != "variant")
                   and ("variant" not in row or label(r) == row["variant"])]
        differences = []
        for report in members:
            other = partner(report)
            mine, theirs = number((report.get("accuracy") or {}).get("finetuned")), None
            if other is not None:
                theirs = number((other.get("accuracy") or {}).get("finetuned"))
            if mine is not None and theirs is not None:
                differences.append(mine - theirs)
        if not differences:
            row["vs_baseline"] = {"strategy": baseline, "n": 0, "mean": None, "low": None, "high": None,
                                  "verdict": "no pair"}
            continue
        interval = paired_interval(differences)
        verdict = "tie" if interval["tie"] else ("better" if interval["mean"] > 0 else "worse")
        row["vs_baseline"] = {"strategy": baseline, "n": interval["n"], "mean": interval["mean"],
                              "low": interval["low"], "high": interval["high"], "verdict": verdict}
