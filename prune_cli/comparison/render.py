"""The summary as CSV (raw fractions), Markdown and a terminal table, from one set of text cells."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

from prune_cli.comparison.summary import group_keys as _group_keys, metrics_shown, number as _number
from prune_cli.storage.atomic import atomic_write_text


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Raw numbers (fractions, full precision) for further analysis; empty cells for missing values."""
    fields = _group_keys(rows) + ["n", "seeds", "budget_epochs"] + [f"{n}_{s}" for n, _, _ in metrics_shown(rows)
                                                                   for s in ("mean", "std", "ci95")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: ("" if row.get(k) is None else row.get(k)) for k in fields}
        cells["seeds"] = " ".join(str(s) for s in row.get("seeds", []))
        writer.writerow(cells)
    atomic_write_text(path, buffer.getvalue())


def write_markdown(rows: Sequence[dict], path: str | os.PathLike) -> None:
    headers, cells = _display(rows)
    lines = ["| " + " | ".join(map(_md_escape, headers)) + " |",
             "|" + "|".join("---:" if _is_numeric_column(h) else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(map(_md_escape, line)) + " |" for line in cells]
    lines += ["", "Cells: mean ± the half-width of its 95% confidence interval (Student t) over the n runs (one "
              "per seed) of each row, in percent; \"(n=1)\": a single run, no interval. epochs: the training "
              "budget after the dense stage (fine-tuning, constrained training, retraining). The CSV has the "
              "sample standard deviations too."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")  # a bare pipe would split the cell


def print_table(rows: Sequence[dict], console=None) -> None:
    """The summary in the terminal, made to fit 80 columns: short headers (the caption gives the units),
    and group keys equal in every row shown once in the title. The files keep every column."""
    from rich import box  # lazily: the Python API does not need rich
    from rich.console import Console
    from rich.table import Table

    headers, cells = _display(rows)
    n_keys = len(_group_keys(rows))
    constant = {i for i in range(n_keys) if len({line[i] for line in cells}) == 1}
    title = "  ".join(f"{headers[i]}={cells[0][i]}" for i in sorted(constant)) or "prune-compare"
    table = Table(title=title, caption="sparsity and accuracy in %: mean ± 95% interval over the n seeds",
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    shown = [i for i in range(len(headers)) if i not in constant]
    for i in shown:
        # Key columns keep their names whole where they fit; on a narrow terminal they fold onto a second line.
        width = max((len(line[i]) for line in cells), default=0) if i < n_keys else None
        table.add_column(_TERMINAL_HEADERS.get(headers[i], headers[i]), min_width=width,
                         justify="right" if _is_numeric_column(headers[i]) else "left",
                         overflow="fold")  # a long name wraps onto the next line; never cut with an ellipsis
    for line in cells:
        table.add_row(*(line[i] for i in shown))
    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: as wide as the table needs, not 80 columns
            console = Console(width=max(80, Console(width=1000).measure(table).maximum))
    console.print(table)


_TERMINAL_HEADERS = {"target sparsity (%)": "target", "achieved sparsity (%)": "sparsity",
                     "dense acc. (%)": "dense acc", "pruned acc. (%)": "pruned acc",
                     "fine-tuned acc. (%)": "tuned acc", "int8 acc. (%)": "int8 acc"}


def _display(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown file and the terminal table, so they never disagree."""
    keys = _group_keys(rows)
    metrics = metrics_shown(rows)
    headers = [_key_header(k) for k in keys] + ["n", "epochs"] + [header for _, _, header in metrics]
    cells = []
    for row in rows:
        line = [_key_cell(k, row.get(k)) for k in keys] + [str(row["n"]), row.get("budget_epochs") or "n/a"]
        line += [_mean_ci_cell(row[f"{name}_mean"], row.get(f"{name}_ci95")) for name, _, _ in metrics]
        cells.append(line)
    return headers, cells




def _key_header(key: str) -> str:
    return "target sparsity (%)" if key == "target_sparsity" else key


def _key_cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "target_sparsity" and _number(value) is not None:
        return f"{100 * value:.2f}"
    return str(value)


def _mean_ci_cell(mean: float | None, ci95: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f} (n=1)" if ci95 is None else f"{100 * mean:.2f} ± {100 * ci95:.2f}"


def _is_numeric_column(header: str) -> bool:
    return header in ("n", "epochs") or header.endswith("(%)")
