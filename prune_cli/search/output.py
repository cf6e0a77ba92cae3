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
        head = "Best" if result.get("verdict") == "best" else "Highest, but tied"
        lines += [f"**{head}: {best['strategy']} at sparsity {best['sparsity']:.4f}** (validation drop "
                  f"{100 * best['val_drop']:.2f} points; test accuracy {100 * best['test_accuracy']:.2f}%).", "",
                  f"Verdict: **{result.get('verdict')}**" + (f" (tied with {', '.join(result['tied_with'])})"
                                                             if result.get("tied_with") else "")
                  + f": {result.get('why')}.", ""]
    resolution = result.get("resolution") or {}
    if resolution.get("val_images"):
        lines += [f"Resolution: {resolution['val_images']} validation images, so one image is "
                  f"{resolution['points_per_image']:.2f} points and the budget of {100 * result['max_drop']:.2f} "
                  f"points is {resolution['budget_images']:.1f} images.", ""]
    screening = result.get("screening")
    if screening:
        lines += ["## Choosing the strategy (strategy=auto)", "", screening["why"] + ".", "",
                  "| strategy | val acc. (%) | val drop (points) | epochs (dense + after) | verdict |",
                  "|---|---|---|---|---|"]
        for row in sorted(screening["strategies"], key=lambda r: -r.get("val_accuracy", -1)):
            if "refused" in row:
                lines.append(f"| {row['strategy']} | refused: {_cell(row['refused'])} | - | - | not screened |")
                continue
            budget = row["budget"]
            lines.append(f"| {row['strategy']} | {100 * row['val_accuracy']:.2f} | {100 * row['val_drop']:.2f} | "
                         f"{budget['dense_epochs']} + {budget['epochs_after_dense']} | {_cell(row['verdict'])} |")
        lines += ["", "## The search", ""]
    lines += ["| strategy | chosen sparsity | val drop (points) | test acc. (%) | next failing sparsity | probes | "
              "epochs (dense + after) |", "|---|---|---|---|---|---|---|"]
    for name, r in result["strategies"].items():
        c, budget = r["chosen"], r.get("budget") or {}
        epochs = f"{budget.get('dense_epochs', '?')} + {budget.get('epochs_after_dense', '?')}"
        lines.append(f"| {name} | {c['sparsity']:.4f} | {100 * c['val_drop']:.2f} | {100 * c['test_accuracy']:.2f} | "
                     f"{c.get('next_failing', '-')} | {len(r['probes'])} | {epochs} |" if c else
                     f"| {name} | none | - | - | - | {len(r['probes'])} | {epochs} |")
    for name, r in result["strategies"].items():
        lines += ["", f"## {name}: probes in order", "", "| sparsity | val acc. (%) | val drop (points) | within |",
                  "|---|---|---|---|"]
        lines += [f"| {p['sparsity']:.6f} | {100 * p['val_accuracy']:.2f} | {100 * p['val_drop']:.2f} | "
                  f"{'yes' if p['within'] else 'no'} |" for p in r["probes"]]
        if r.get("non_monotone"):
            pairs = ", ".join(f"passed at {p['passed']:.6f} after failing at {p['failed']:.6f}"
                              for p in r["non_monotone"])
            lines += ["", f"**Not monotone**: {pairs}; accuracy did not fall steadily with sparsity there, so the "
                          f"boundary near these probes is uncertain."]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "/").replace("\n", " ")


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
