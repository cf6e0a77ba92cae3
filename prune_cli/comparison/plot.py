"""The comparison plot: fine-tuned accuracy against sparsity, one line per strategy."""
from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from prune_cli.comparison.summary import group_keys as _group_keys, number as _number
from prune_cli.storage.atomic import atomic_path


def plot_costs(rows: Sequence[dict], out_dir) -> list:
    """Fine-tuned accuracy against measured costs, one line per strategy: ``compare_macs.png`` (non-zero
    multiply-adds per image, log scale) and ``compare_latency.png`` (batch-256 latency of the shrunk or masked
    model), each written when the runs have that measurement. Returns the paths written."""
    from pathlib import Path

    from matplotlib.figure import Figure
    written = []
    for name, xlabel, filename in (("macs_nonzero", "multiply-adds per image (non-zero, log scale)", "compare_macs.png"),
                                   ("latency_ms", "latency at batch 256 (ms, shrunk or masked model)",
                                    "compare_latency.png")):
        if not any(row.get(f"{name}_mean") is not None for row in rows):
            continue
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for label, series in _series(rows).items():
            points = sorted((r[f"{name}_mean"], 100 * r["accuracy_finetuned_mean"]) for r in series
                            if r.get(f"{name}_mean") is not None and r["accuracy_finetuned_mean"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        if name == "macs_nonzero":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy after fine-tuning (%)")
        ax.set_title(_plot_title(rows))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        path = Path(out_dir) / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        written.append(path)
    return written


def plot(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Fine-tuned accuracy against the fraction of weights remaining (1 - sparsity, log scale: 10%, 5% and
    2% are equally far apart), one line per strategy (and per any other varying group key), error bars of
    the 95% interval, and the dense accuracy as a dashed reference. Written as PNG."""
    # The object-oriented Figure API draws with Agg without touching pyplot's global state: no display
    # needed, no figures leaking between calls, nothing changed for a caller who uses pyplot themselves.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x_key = "target_sparsity" if rows and "target_sparsity" in rows[0] else "sparsity_achieved_mean"
    for label, series in _series(rows).items():
        points = sorted((100 * (1 - r[x_key]), 100 * r["accuracy_finetuned_mean"],
                         100 * (r.get("accuracy_finetuned_ci95") or 0.0))
                        for r in series if _number(r.get(x_key)) is not None and r[x_key] < 1
                        and r["accuracy_finetuned_mean"] is not None)
        if points:
            xs, ys, errs = zip(*points)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    for style, (label, accuracy) in zip(itertools.cycle(("--", ":", "-.")), _dense_references(rows).items()):
        ax.axhline(100 * accuracy, color="0.35", linestyle=style, label=f"{label}: {100 * accuracy:.2f}%")
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right
    ax.set_xlabel("weights remaining (%, log scale; " + ("1 - target sparsity)" if x_key == "target_sparsity"
                                                         else "1 - achieved sparsity)"))
    ax.set_ylabel("accuracy after fine-tuning (%)")
    ax.set_title(_plot_title(rows))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)  # explicit format: the temp name does not end in .png


def _series(rows: Sequence[dict]) -> dict[str, list[dict]]:
    # The strategy always names a line; any other group key (schedule, model, ...) only when it varies,
    # so a plain strategy sweep reads "magnitude", not "lenet300/digits/magnitude/oneshot".
    keys = [k for k in _group_keys(rows) if k != "target_sparsity"]
    keys = [k for k in keys if k == "strategy" or len({str(r.get(k)) for r in rows}) > 1]
    series: dict[str, list[dict]] = {}
    for row in rows:
        label = " / ".join(str(row.get(k)) for k in keys) or "all runs"
        series.setdefault(label, []).append(row)
    return series


def _dense_references(rows: Sequence[dict]) -> dict[str, float]:
    """Mean dense accuracy per model/dataset pair (one entry when the plot shows a single pair)."""
    pair_keys = [k for k in ("model", "dataset") if rows and k in rows[0]]
    sums: dict[str, list[float]] = {}
    for row in rows:
        if row["accuracy_dense_mean"] is None:
            continue
        pair = "/".join(str(row[k]) for k in pair_keys)
        total = sums.setdefault(pair, [0.0, 0.0])
        total[0] += row["accuracy_dense_mean"] * row["n"]  # weight by runs: rows can have different n
        total[1] += row["n"]
    if len(sums) == 1:
        return {"dense": s / n for s, n in sums.values()}
    return {f"dense ({pair})": s / n for pair, (s, n) in sums.items()}


def _plot_title(rows: Sequence[dict]) -> str:
    constant = [str(rows[0][k]) for k in ("model", "dataset")
                if rows and k in rows[0] and len({str(r[k]) for r in rows}) == 1]
    return " / ".join(constant) or "prune-compare"
