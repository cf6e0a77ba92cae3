"""search.json, search.md and search.png in the search directory."""
from __future__ import annotations

import json
from pathlib import Path

from prune_cli.storage.atomic import atomic_path, atomic_write_text


def write_outputs(result: dict, directory: Path) -> None:
    directory = Path(directory)
    atomic_write_text(directory / "search.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(directory / "search.md", markdown(result))
    plot(result, directory / "search.png")


def markdown(result: dict) -> str:
    lines = [f"# prune-search: highest sparsity within {100 * result['max_drop']:.2f} points of dense "
             f"(validation)", "",
             f"Bisection on the weights remaining, to within {result['tolerance']} of them; probes between "
             f"sparsity {result['range'][0]} and {result['range'][1]}. Choices use the validation split; the "
             f"test accuracy is shown for the chosen runs only.", ""]
    best = result["best"]
    if best:
        lines += [f"**Best: {best['strategy']} at sparsity {best['sparsity']:.4f}** (validation drop "
                  f"{100 * best['val_drop']:.2f} points; test accuracy {100 * best['test_accuracy']:.2f}%).", ""]
    screening = result.get("screening")
    if screening:
        lines += ["## Choosing the strategy (strategy=auto)", "", screening["why"] + ".", "",
                  "| strategy | val acc. (%) | val drop (points) | epochs | kept |", "|---|---|---|---|---|"]
        for row in sorted(screening["strategies"], key=lambda r: -r.get("val_accuracy", -1)):
            lines.append(f"| {row['strategy']} | refused: {row['refused']} | - | - | no |" if "refused" in row else
                         f"| {row['strategy']} | {100 * row['val_accuracy']:.2f} | {100 * row['val_drop']:.2f} | "
                         f"{row['budget_epochs']} | {'yes' if row['kept'] else 'no'} |")
        lines += ["", "## The search", ""]
    lines += ["| strategy | chosen sparsity | val drop (points) | test acc. (%) | next failing sparsity | probes |",
              "|---|---|---|---|---|---|"]
    for name, r in result["strategies"].items():
        c = r["chosen"]
        lines.append(f"| {name} | {c['sparsity']:.4f} | {100 * c['val_drop']:.2f} | {100 * c['test_accuracy']:.2f} | "
                     f"{c.get('next_failing', '-')} | {len(r['probes'])} |" if c else
                     f"| {name} | none | - | - | - | {len(r['probes'])} |")
    for name, r in result["strategies"].items():
        lines += ["", f"## {name}: probes in order", "", "| sparsity | val acc. (%) | val drop (points) | within |",
                  "|---|---|---|---|"]
        lines += [f"| {p['sparsity']:.6f} | {100 * p['val_accuracy']:.2f} | {100 * p['val_drop']:.2f} | "
                  f"{'yes' if p['within'] else 'no'} |" for p in r["probes"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    dense = None
    for name, r in result["strategies"].items():
        points = sorted((100 * (1 - p["sparsity"]), 100 * p["val_accuracy"]) for p in r["probes"])
        line, = ax.plot(*zip(*points), marker="o", linestyle="-", label=name)
        if r["chosen"]:
            ax.plot([100 * (1 - r["chosen"]["sparsity"])], [100 * r["chosen"]["val_accuracy"]], marker="*",
                    markersize=14, color=line.get_color())
        dense = dense if dense is not None else r["probes"][0]["val_dense"]
    if dense is not None:
        ax.axhline(100 * (dense - result["max_drop"]), color="0.4", linestyle="--",
                   label=f"budget: dense {100 * dense:.2f}% - {100 * result['max_drop']:.2f}")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("validation accuracy after fine-tuning (%)")
    ax.set_title("prune-search (stars: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
