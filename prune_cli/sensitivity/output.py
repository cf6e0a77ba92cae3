"""sensitivity.json, sensitivity.md and sensitivity.png."""
from __future__ import annotations

import json
from pathlib import Path

from prune_cli.storage.atomic import atomic_path, atomic_write_text


def write_outputs(result: dict, directory: Path) -> None:
    atomic_write_text(directory / "sensitivity.json", json.dumps(result, indent=2) + "\n")
    sparsities = sorted({s for points in result["layers"].values() for s in points}, key=float)
    lines = [f"# Layer sensitivity (validation accuracy, each layer pruned alone; dense "
             f"{100 * result['dense_val_accuracy']:.2f}%, {result['finetune_epochs']} fine-tune epochs)", "",
             "| layer | weights | " + " | ".join(f"{float(s):.0%}" for s in sparsities) + " |",
             "|---|---|" + "---|" * len(sparsities)]
    for name, points in result["layers"].items():
        lines.append(f"| {name} | {result['sizes'][name]:,} | "
                     + " | ".join(f"{100 * points[s]:.2f}" if s in points else "-" for s in sparsities) + " |")
    atomic_write_text(directory / "sensitivity.md", "\n".join(lines) + "\n")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in result["layers"].items():
        xs = sorted(points, key=float)
        ax.plot([100 * float(s) for s in xs], [100 * points[s] for s in xs], marker="o", label=name)
    ax.axhline(100 * result["dense_val_accuracy"], color="0.4", linestyle="--", label="dense")
    ax.set_xlabel("sparsity of the layer alone (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("layer sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_path(directory / "sensitivity.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
