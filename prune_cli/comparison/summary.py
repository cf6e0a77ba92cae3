"""Grouping runs by their settings and summarising the seeds of each group."""
from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence

from prune_cli.errors import UsageError
from prune_cli.significance import t_quantile

log = logging.getLogger(__name__)

DEFAULT_BY = ("model", "dataset", "strategy", "schedule", "target_sparsity")

# Group keys that do not live under report["experiment"].
_KEY_PATHS = {"target_sparsity": ("sparsity", "target")}

# (summary field prefix, where it is in report.json, display header). All are fractions in [0, 1].
METRICS = (
    ("sparsity_achieved", ("sparsity", "achieved"), "achieved sparsity (%)"),
    ("accuracy_dense", ("accuracy", "dense"), "dense acc. (%)"),
    ("accuracy_pruned", ("accuracy", "pruned"), "pruned acc. (%)"),
    ("accuracy_finetuned", ("accuracy", "finetuned"), "fine-tuned acc. (%)"),
)
# Shown only when some compared run has them (quantize=int8_*).
OPTIONAL_METRICS = (("accuracy_quantized", ("quantized", "accuracy"), "int8 acc. (%)"),)
def _deployed_latency(report: dict):
    """Batch-256 latency of the model one would deploy: the shrunk one when there is one, else the masked."""
    latency = report.get("latency") or {}
    entry = latency.get("shrunk") or latency.get("masked") or {}
    timed = sorted((int(k[len("batch_"):-len("_ms")]), v) for k, v in entry.items()
                   if k.startswith("batch_") and k.endswith("_ms") and k[len("batch_"):-len("_ms")].isdigit())
    return timed[-1][1] if timed else None  # the largest batch timed (256 by default)


# Summarised for the cost plots (accuracy against multiply-adds and against latency), not shown in the table.
COST_METRICS = (("macs_nonzero", ("flops", "nonzero"), "multiply-adds per image (non-zero)"),
                ("latency_ms", _deployed_latency, "latency at batch 256 (ms)"))
STATS = ("mean", "std", "ci95", "low", "high")
SUMMARY_FIELDS = {"n", "seeds", "budget_epochs", "pruned_at", "vs_baseline"} | {
    f"{name}_{stat}" for name, _, _ in METRICS + OPTIONAL_METRICS + COST_METRICS for stat in STATS}
FRACTIONS = {name for name, _, _ in METRICS + OPTIONAL_METRICS}  # accuracies and sparsities: within [0, 1]


def metrics_shown(rows) -> tuple:
    """The metrics a table of these rows shows: every standard one, and the optional ones some row has."""
    return METRICS + tuple(m for m in OPTIONAL_METRICS if any(row.get(f"{m[0]}_mean") is not None for row in rows))

# Rows are listed by strategy, then sparsity; the remaining group keys break ties in the order given.
_SORT_FIRST = ("strategy", "schedule", "target_sparsity")


def summarize(reports: Iterable[dict], by: Sequence[str] = DEFAULT_BY) -> list[dict]:
    """One row per group of `by` values: n, seeds, and mean/std over the group of every metric.

    std is the sample standard deviation (0 for a single run). A metric that is null in some runs (e.g. no
    fine-tuning) is averaged over the runs that have it; null in all of them gives None.
    """
    reports = list(reports)
    by = tuple(by)
    _check_keys(reports, by)
    groups: dict[tuple, list[dict]] = {}
    for report in reports:
        groups.setdefault(tuple(group_value(report, key) for key in by), []).append(report)
    if "variant" not in by and any(len({group_value(r, "variant") for r in members}) > 1
                                   for members in groups.values()):
        # Runs that share these keys but differ in other settings (epochs, scope, ...) are not seeds of one
        # experiment: averaging them would hide the difference behind a large "std over seeds".
        log.warning("some runs share %s but differ in other settings; they are kept apart by the 'variant' "
                    "column (what differs between their configs)", ", ".join(by))
        labels = variant_labels(reports, by)
        rows = summarize(reports, (*by, "variant"))
        for row in rows:
            row["variant"] = labels.get(row["variant"], row["variant"])
        return sorted(rows, key=lambda row: _sort_key(row, (*by, "variant")))
    rows = [_summarize_group(dict(zip(by, key)), members) for key, members in groups.items()]
    warn_unequal_budgets(rows)
    return sorted(rows, key=lambda row: _sort_key(row, by))


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def variant_labels(reports: Sequence[dict], by: Sequence[str] = DEFAULT_BY) -> dict:
    """{variant hash: what sets it apart}, e.g. ``finetune.epochs=30``: the config keys (from each report's
    ``config``) whose values differ between the variants that share a row's other keys (model, dataset,
    strategy, schedule: the target sparsity aside), seed and sparsity aside. A row of another model is not
    labelled by that model's settings: its own columns say it. Reports without a config keep their hash."""
    from prune_cli.config import result_neutral
    families: dict[tuple, dict] = {}
    for report in reports:
        variant, config = group_value(report, "variant"), report.get("config")
        family = tuple(group_value(report, k) for k in by if k not in ("target_sparsity", "variant"))
        if variant is not None and isinstance(config, dict):
            families.setdefault(family, {}).setdefault(variant, {
                k: v for k, v in _flatten(config).items() if not result_neutral(k) and k not in ("seed", "sparsity")})
    labels: dict = {}
    for configs in families.values():
        keys = sorted(set().union(*configs.values())) if configs else []
        differing = [k for k in keys
                     if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()}) > 1]
        for variant, config in configs.items():
            label = ", ".join(f"{k}={config.get(k)}" for k in differing) or "-"
            labels[variant] = label if variant not in labels or labels[variant] == label else \
                f"{labels[variant]}; {label}"
    return labels if len(labels) > 1 else {}


def group_value(report: dict, key: str):
    """The value of group key `key` in a report: `target_sparsity`, or any field of `experiment`."""
    value = _lookup(report, _KEY_PATHS.get(key, ("experiment", key)))
    # A list or dict field (e.g. a layer list) cannot be a dict key; its JSON text groups the same way.
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _check_keys(reports: list[dict], by: tuple[str, ...]) -> None:
    # A misspelt key would silently put every run into one group; refuse it instead.
    if not reports:
        return
    known = set(_KEY_PATHS)
    for report in reports:
        experiment = report.get("experiment")
        if isinstance(experiment, dict):
            known.update(experiment)
    unknown = [key for key in by if key not in known]
    if unknown:
        raise UsageError(f"unknown group key {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _distinct_seeds(keys: dict, members: list[dict]) -> list[dict]:
    """One run per configuration: a run repeated with the same config and seed (the same ``fingerprint``) is
    the same experiment again (on the CPU, the same numbers), not another sample; the repeats are named and
    left out."""
    kept: dict = {}
    repeats = []
    for report in sorted(members, key=lambda r: str(r.get("report_path", ""))):
        identity = report.get("fingerprint") or id(report)
        if identity in kept:
            repeats.append(report)
            continue
        kept[identity] = report
    if repeats:
        where = ", ".join(str(r.get("report_path", "?")) for r in repeats[:3])
        log.warning("%s: %d run(s) repeat a config and seed already counted (%s); each is counted once",
                    " ".join(f"{k}={v}" for k, v in keys.items()), len(repeats), where)
    return list(kept.values())


def _summarize_group(keys: dict, members: list[dict]) -> dict:
    members = _distinct_seeds(keys, members)
    row = dict(keys)
    row["n"] = len(members)
    row["seeds"] = sorted({s for s in (_lookup(r, ("experiment", "seed")) for r in members) if s is not None},
                          key=_sortable)
    for name, where, _ in METRICS + OPTIONAL_METRICS + COST_METRICS:
        values = [v for v in (number(where(r) if callable(where) else _lookup(r, where)) for r in members)
                  if v is not None]
        row[f"{name}_mean"] = statistics.fmean(values) if values else None
        row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        # Half-width of the 95% interval of the mean (Student t); none for a single run.
        row[f"{name}_ci95"] = (t_quantile(len(values) - 1) * row[f"{name}_std"] / len(values) ** 0.5
                               if len(values) > 1 else None)
        row[f"{name}_low"], row[f"{name}_high"] = interval(values, row[f"{name}_ci95"], name in FRACTIONS)
    # Which moment "pruned" is (report accuracy.pruned_at): tables keep different moments in different columns.
    moments = sorted({str(m) for m in (_lookup(r, ("accuracy", "pruned_at")) for r in members) if m is not None})
    row["pruned_at"] = moments[0] if len(moments) == 1 else ("; ".join(moments) or None)
    budgets = sorted({int(v) for v in (number(_lookup(r, ("budget", "total_epochs"))) for r in members)
                      if v is not None})
    row["budget_epochs"] = "/".join(map(str, budgets)) if budgets else None
    return row


def interval(values: list[float], ci95: float | None, fraction: bool) -> tuple:
    """(low, high) shown around a mean: the 95% t-interval for three runs or more, the range (min, max) for
    two (a t-interval from two runs is 12.7 standard errors wide: it says nothing), none for one; never
    outside [0, 1] for fractions (an accuracy interval past 100% is not an accuracy) nor below 0 otherwise."""
    if len(values) < 2:
        return None, None
    if len(values) == 2:
        low, high = min(values), max(values)
    else:
        mean = statistics.fmean(values)
        low, high = mean - ci95, mean + ci95
    return max(low, 0.0), (min(high, 1.0) if fraction else high)


def warn_unequal_budgets(rows: Sequence[dict]) -> None:
    """Rows trained for different numbers of epochs after the dense stage are not an equal-budget
    comparison: say so (the budget column shows each row's)."""
    budgets = {row.get("budget_epochs") for row in rows if row.get("budget_epochs") is not None}
    if len(budgets) > 1:
        log.warning("the compared rows had different training budgets after the dense stage (%s epochs); "
                    "see the 'epochs' column", ", ".join(sorted(budgets, key=lambda b: int(b.split("/")[0]))))


def _sort_key(row: dict, by: tuple[str, ...]) -> tuple:
    order = [k for k in _SORT_FIRST if k in by] + [k for k in by if k not in _SORT_FIRST]
    return tuple(_sortable(row[k]) for k in order)


def _sortable(value) -> tuple:
    # Numbers before strings before missing values, so mixed or null keys still sort without a TypeError.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    if value is None:
        return (2, 0, "")
    return (1, 0, str(value))


def _lookup(report: dict, where: Sequence[str]):
    node = report
    for part in where:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node



def group_keys(rows: Sequence[dict]) -> list[str]:
    """The group-key columns of summary rows, in order."""
    return [k for k in rows[0] if k not in SUMMARY_FIELDS] if rows else list(DEFAULT_BY)


def number(value) -> float | None:
    """A finite number as float, or None (missing, null, NaN, not a number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
