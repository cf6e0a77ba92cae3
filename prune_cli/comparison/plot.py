"""The comparison plot: fine-tuned accuracy against sparsity, one line per strategy."""
from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from prune_cli.comparison.summary import group_keys as _group_keys, number as _number
from prune_cli.storage.atomic import atomic_path


def plot_costs(rows: Sequence[dict], out_dir) -> list:
    """Fine-tuned accuracy against measured costs, one marker series per strategy: ``compare_macs.png``
    (non-zero multiply-adds per image, log scale, joined by lines: the counts are exact) and
    ``compare_latency.png`` (batch-256 latency of the shrunk or masked model: points with their spread over
    the runs, not lines, since neighbouring latencies differ by noise), each written when the runs have that
    measurement. Returns the paths written."""
    from pathlib import Path

    written = []
    for name, xlabel, filename in (("macs_nonzero", "multiply-adds per image (non-zero, log scale)", "compare_macs.png"),
                                   ("latency_ms", "latency at batch 256 (ms, shrunk or masked model)",
                                    "compare_latency.png")):
        if not any(row.get(f"{name}_mean") is not None for row in rows):
            continue
        fig, panels = _figure(rows)
        colour_of = _colour_map(panels)
        for (pair, pair_rows), ax in zip(panels.items(), fig.axes):
            for label, series in _series(pair_rows).items():
                colour = colour_of[label]
                points = sorted(((r[f"{name}_mean"], 100 * r["accuracy_finetuned_mean"], r) for r in series
                                 if r.get(f"{name}_mean") is not None and r["accuracy_finetuned_mean"] is not None),
                                key=lambda point: point[:2])
                if not points:
                    continue
                xs, ys, members = zip(*points)
                if name == "latency_ms":
                    xerr = _spread([r.get(f"{name}_low") for r in members], [r.get(f"{name}_high") for r in members],
                                   xs, 1.0)
                    ax.errorbar(xs, ys, xerr=xerr, yerr=_accuracy_spread(members), fmt="o", capsize=3,
                                color=colour, label=label)
                else:
                    ax.plot(xs, ys, marker="o", color=colour, label=label)
            if name == "macs_nonzero":
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy after fine-tuning (%)")
            ax.set_title(pair or _plot_title(rows))
            ax.grid(alpha=0.3)
        _legend(fig)
        path = Path(out_dir) / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        written.append(path)
    return written


def plot(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Fine-tuned accuracy against the fraction of weights remaining (1 - sparsity, log scale: 10%, 5% and
    2% are equally far apart, ticks in percent), one panel per model and dataset, one line per strategy (and
    per any other varying group key), the strategies nudged apart where they share an x, error bars of each
    row's interval (clipped to [0, 100]; the range for two runs; none for one), and the dense accuracy as a
    dashed reference. Written as PNG."""
    x_key = "target_sparsity" if rows and "target_sparsity" in rows[0] else "sparsity_achieved_mean"
    fig, panels = _figure(rows)
    colour_of = _colour_map(panels)
    for (pair, pair_rows), ax in zip(panels.items(), fig.axes):
        series = _series(pair_rows)
        ticks = set()
        for index, (label, members) in enumerate(series.items()):
            colour = colour_of[label]
            points = sorted(((100 * (1 - r[x_key]), r) for r in members
                             if _number(r.get(x_key)) is not None and r[x_key] < 1
                             and r["accuracy_finetuned_mean"] is not None), key=lambda point: point[0])
            if not points:
                continue
            xs, chosen = zip(*points)
            ticks.update(xs)
            # Several strategies at the same sparsity: a few percent apart on the log axis, so no bar hides
            # another (the ticks stay at the true values).
            nudge = 1.0 + 0.025 * (index - (len(series) - 1) / 2)
            ax.errorbar([x * nudge for x in xs], [100 * r["accuracy_finetuned_mean"] for r in chosen],
                        yerr=_accuracy_spread(chosen), marker="o", capsize=3, color=colour, label=label)
        for style, (label, accuracy) in zip(itertools.cycle(("--", ":", "-.")),
                                            _dense_references(pair_rows).items()):
            ax.axhline(100 * accuracy, color="0.35", linestyle=style, label=f"{label}: {100 * accuracy:.2f}%")
        ax.set_xscale("log")
        _percent_ticks(ax, sorted(ticks))
        ax.invert_xaxis()  # sparser to the right
        ax.set_xlabel("weights remaining (%, log scale; " + ("1 - target sparsity)" if x_key == "target_sparsity"
                                                             else "1 - achieved sparsity)"))
        ax.set_ylabel("accuracy after fine-tuning (%)")
        ax.set_title(pair or _plot_title(rows))
        ax.grid(alpha=0.3)
    _legend(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)  # explicit format: the temp name does not end in .png


def _figure(rows: Sequence[dict]):
    """A figure with one panel per model/dataset pair (side by side), and {pair label: its rows}."""
    # The object-oriented Figure API draws with Agg without touching pyplot's global state: no display
    # needed, no figures leaking between calls, nothing changed for a caller who uses pyplot themselves.
    from matplotlib.figure import Figure
    pair_keys = [k for k in ("model", "dataset") if rows and k in rows[0]]
    panels: dict[str, list[dict]] = {}
    for row in rows:
        panels.setdefault(" / ".join(str(row[k]) for k in pair_keys), []).append(row)
    if len(panels) == 1:
        panels = {_plot_title(rows): rows}
    fig = Figure(figsize=(6.5 * len(panels) + 2.5, 4.5), layout="constrained")
    fig.subplots(1, len(panels), squeeze=False)
    return fig, panels


def _legend(fig) -> None:
    """One legend for the figure, outside the panels (it never covers a point)."""
    handles, labels = {}, []
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="outside right upper", fontsize="small")


def _colour_map(panels: dict) -> dict:
    """{series label: colour}, one colour per label across every panel (the shared legend names them once):
    distinct for up to 20 labels (tab20's dark shades first), then round again."""
    from matplotlib import colormaps
    table = colormaps["tab20"].colors
    colours = itertools.cycle(list(table[0::2]) + list(table[1::2]))
    labels = list(dict.fromkeys(label for pair_rows in panels.values() for label in _series(pair_rows)))
    return {label: next(colours) for label in labels}


def _percent_ticks(ax, values: list[float]) -> None:
    """Major ticks at the plotted weights-remaining values, labelled as percentages (no 4x10^1 labels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    if not values:
        return
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}%"))


def _accuracy_spread(rows) -> list:
    """Asymmetric y error bars (percent) from each row's fine-tuned accuracy interval (0 where there is none)."""
    return _spread([r.get("accuracy_finetuned_low") for r in rows], [r.get("accuracy_finetuned_high") for r in rows],
                   [100 * r["accuracy_finetuned_mean"] for r in rows], 100.0)


def _spread(lows, highs, centres, scale: float) -> list:
    below = [0.0 if lo is None else max(0.0, c - scale * lo) for lo, c in zip(lows, centres)]
    above = [0.0 if hi is None else max(0.0, scale * hi - c) for hi, c in zip(highs, centres)]
    return [below, above]


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
        (s, n), = sums.values()
        return {"dense": s / n}
    return {f"dense ({pair})": s / n for pair, (s, n) in sums.items()}


def _plot_title(rows: Sequence[dict]) -> str:
    constant = [str(rows[0][k]) for k in ("model", "dataset")
                if rows and k in rows[0] and len({str(r[k]) for r in rows}) == 1]
    return " / ".join(constant) or "prune-compare"
