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
    fields = _group_keys(rows) + ["n", "seeds", "budget_epochs", "pruned_at"] + [
        f"{n}_{s}" for n, _, _ in metrics_shown(rows) for s in ("mean", "std", "ci95", "low", "high")]
    if any(row.get("vs_baseline") for row in rows):
        fields += [f"vs_baseline_{k}" for k in ("strategy", "n", "mean", "low", "high", "verdict")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: ("" if row.get(k) is None else row.get(k)) for k in fields}
        cells["seeds"] = " ".join(str(s) for s in row.get("seeds", []))
        for key, value in (row.get("vs_baseline") or {}).items():
            if f"vs_baseline_{key}" in cells:
                cells[f"vs_baseline_{key}"] = "" if value is None else value
        writer.writerow(cells)
    atomic_write_text(path, buffer.getvalue())


def write_markdown(rows: Sequence[dict], path: str | os.PathLike) -> None:
    headers, cells = _display(rows)
    lines = ["| " + " | ".join(map(_md_escape, headers)) + " |",
             "|" + "|".join("---:" if _is_numeric_column(h) else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(map(_md_escape, line)) + " |" for line in cells]
    lines += ["", "Cells: mean ± the half-width of its 95% confidence interval (Student t) over the n runs (one "
              "per seed) of each row, in percent; \"mean [low, high]\": that interval clipped to [0, 100], or "
              "for n=2 the two runs' range (a t-interval from two runs says nothing); \"(n=1)\": a single run, "
              "no interval. epochs: the training budget after the dense stage (fine-tuning, constrained "
              "training, retraining). The CSV has the sample standard deviations and the intervals' ends too."]
    moments = _moments(rows)
    if len(moments) > 1:
        lines += ["", "The pruned accuracy is taken at different moments by different schedules, so each moment "
                      "has its own column: " + "; ".join(f"[{i}] {m}" for i, m in enumerate(moments, start=1)) + "."]
    baseline = next((row["vs_baseline"]["strategy"] for row in rows if row.get("vs_baseline")), None)
    if baseline:
        lines += ["", f"vs {baseline}: the fine-tuned accuracy minus {baseline}'s, paired by seed (same settings "
                      f"otherwise), in points: mean [95% Student-t interval]; \"tie\" when the interval contains 0 "
                      f"(or a single pair, which has no interval)."]
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
        table.add_column(_terminal_header(headers[i]), min_width=width,
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


def _terminal_header(header: str) -> str:
    for long, short in _TERMINAL_HEADERS.items():
        if header.startswith(long):
            return short + header[len(long):]
    return header


def _moments(rows: Sequence[dict]) -> list[str]:
    """The distinct moments of the rows' pruned accuracies (accuracy.pruned_at), in order of appearance."""
    return list(dict.fromkeys(row["pruned_at"] for row in rows if row.get("pruned_at")))


def _display(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown file and the terminal table, so they never disagree.
    Pruned accuracies of different moments never share a column: one column per moment, numbered."""
    keys = _group_keys(rows)
    metrics = metrics_shown(rows)
    moments = _moments(rows)
    headers = [_key_header(k) for k in keys] + ["n", "epochs"]
    for name, _, header in metrics:
        if name == "accuracy_pruned" and len(moments) > 1:
            headers += [f"{header} [{i}]" for i in range(1, len(moments) + 1)]
        else:
            headers.append(header)
    baseline = next((row["vs_baseline"]["strategy"] for row in rows if row.get("vs_baseline")), None)
    if baseline:
        headers.append(f"vs {baseline} (points)")
    cells = []
    for row in rows:
        line = [_key_cell(k, row.get(k)) for k in keys] + [str(row["n"]), row.get("budget_epochs") or "n/a"]
        for name, _, _ in metrics:
            cell = _mean_ci_cell(row[f"{name}_mean"], row.get(f"{name}_ci95"), row.get(f"{name}_low"),
                                 row.get(f"{name}_high"), row["n"])
            if name == "accuracy_pruned" and len(moments) > 1:
                line += [cell if row.get("pruned_at") == moment else "-" for moment in moments]
            else:
                line.append(cell)
        if baseline:
            line.append(_versus_cell(row.get("vs_baseline")))
        cells.append(line)
    return headers, cells


def _versus_cell(versus) -> str:
    if not versus:
        return "-"
    if versus.get("mean") is None:
        return versus.get("verdict", "-")
    interval = "" if versus.get("low") is None else f" [{100 * versus['low']:+.2f}, {100 * versus['high']:+.2f}]"
    return f"{100 * versus['mean']:+.2f}{interval} {versus['verdict']}"




def _key_header(key: str) -> str:
    return "target sparsity (%)" if key == "target_sparsity" else key


def _key_cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "target_sparsity" and _number(value) is not None:
        return f"{100 * value:.2f}"
    return str(value)


def _mean_ci_cell(mean: float | None, ci95: float | None, low: float | None = None, high: float | None = None,
                  n: int = 0) -> str:
    """``mean ± half-width`` for a symmetric 95% interval (n >= 3); ``mean [low, high]`` where the interval
    was clipped to [0, 100] or is the range of two runs; ``mean (n=1)`` for a single run."""
    if mean is None:
        return "n/a"
    if low is None or high is None:
        return f"{100 * mean:.2f} (n=1)" if ci95 is None else f"{100 * mean:.2f} ± {100 * ci95:.2f}"
    if n >= 3 and ci95 is not None and abs((mean - low) - ci95) < 1e-12 and abs((high - mean) - ci95) < 1e-12:
        return f"{100 * mean:.2f} ± {100 * ci95:.2f}"
    return f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def _is_numeric_column(header: str) -> bool:
    return header in ("n", "epochs") or header.endswith(("(%)", "]", "(points)"))
