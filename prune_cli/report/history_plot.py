"""``history.png``: the training history of a run at a glance, beside ``report.md``.

Two panels over the run's epochs, in run order (x: the epoch within each phase, phases side by side and
named): the mean training loss (log scale), and the accuracies (training, from each epoch's own forward
passes, and validation when there is a validation split) on an axis fitted to them. Each phase (train,
round1.finetune, ...) is its own segment: lines never join one phase to the next. Drawn with matplotlib's
object-oriented API (no pyplot state, no display needed), as the comparison plots are.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

from prune_cli.storage.atomic import atomic_write_bytes

NAME = "history.png"
LOSS, TRAIN, VALIDATION = "#1f77b4", "#2ca02c", "#ff7f0e"


def phases(history: list[dict]) -> list[tuple[str, list[int]]]:
    """[(phase name, indices into history)] in run order; a phase that comes back later is a new segment."""
    out: list[tuple[str, list[int]]] = []
    for index, entry in enumerate(history):
        name = str(entry["stage"]) + (" (cached)" if entry.get("cached") else "")
        if not out or out[-1][0] != name:
            out.append((name, []))
        out[-1][1].append(index)
    return out


def draw_history(history: list[dict], path: Path, title: Optional[str] = None) -> bool:
    """Write ``path`` (a PNG) from the report's ``history``; False (nothing written) when it is empty."""
    if not history:
        return False
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator
    fig = Figure(figsize=(8, 5), layout="constrained")
    loss_ax, accuracy_ax = fig.subplots(2, 1, sharex=True)
    segments = phases(history)
    accuracies = []
    ticks, labels = [], []
    for number, (name, indices) in enumerate(segments):
        xs = [i + number * 0.5 for i in indices]  # half an epoch of room between phases
        entries = [history[i] for i in indices]
        loss_ax.plot(xs, [max(float(e["loss"]), 1e-12) for e in entries], marker=".", color=LOSS,
                     label="training loss" if number == 0 else None)
        for key, colour, label in (("train_accuracy", TRAIN, "training accuracy"),
                                   ("val_accuracy", VALIDATION, "validation accuracy")):
            points = [(x, 100 * float(e[key])) for x, e in zip(xs, entries) if e.get(key) is not None]
            if points:
                accuracies += [y for _, y in points]
                shown = label not in accuracy_ax.get_legend_handles_labels()[1]
                accuracy_ax.plot(*zip(*points), marker=".", color=colour, label=label if shown else None)
        if number:
            for ax in (loss_ax, accuracy_ax):
                ax.axvline(xs[0] - 0.75, color="0.6", linewidth=0.8, linestyle=":")
        loss_ax.annotate(name, (sum(xs) / len(xs), 1.0), xycoords=("data", "axes fraction"),
                         xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize="small")
        # Epoch numbers within the phase: the first and the last (every one when the phase is short).
        shown = entries if len(entries) <= 6 else [entries[0], entries[-1]]
        for e in shown:
            ticks.append(xs[entries.index(e)])
            labels.append(str(e["epoch"]))
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (log)")
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title(title or "training history", pad=18)
    if accuracies:
        low, high = min(accuracies), max(accuracies)
        margin = max(0.5, 0.08 * (high - low))
        accuracy_ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
        accuracy_ax.legend(fontsize="small", loc="lower right")
    accuracy_ax.set_ylabel("accuracy (%)")
    accuracy_ax.grid(alpha=0.3)
    accuracy_ax.xaxis.set_major_locator(FixedLocator(ticks))
    accuracy_ax.xaxis.set_minor_locator(NullLocator())
    accuracy_ax.set_xticklabels(labels, fontsize="small")
    accuracy_ax.set_xlabel("epoch of each phase")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return True
