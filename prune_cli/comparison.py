"""`prune-compare DIR...`: many runs' `report.json` -> one summary table (CSV, Markdown, terminal) and a plot.

Runs are grouped by experiment settings (by default model, dataset, strategy, schedule and target sparsity);
the seeds inside a group are summarised as mean and sample standard deviation, because on small test sets a
single run says little (one point of accuracy on digits is under four images).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .atomic import atomic_path, atomic_write_text
from .errors import UsageError

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
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
_SUMMARY_FIELDS = {"n", "seeds"} | {f"{name}_{stat}" for name, _, _ in METRICS for stat in ("mean", "std")}

# Rows are listed by strategy, then sparsity; the remaining group keys break ties in the order given.
_SORT_FIRST = ("strategy", "schedule", "target_sparsity")


# --- collecting -------------------------------------------------------------------------------------------

def collect_reports(paths: Iterable[str | os.PathLike], include_failed: bool = False) -> list[dict]:
    """Every readable report.json below `paths` (directories, searched recursively, or report files).

    Corrupt or unreadable files are skipped with a warning: one broken run must not hide a whole sweep.
    Only completed runs are returned unless `include_failed`. Each report gains a `report_path` key.
    """
    reports = [r for r in map(_read_report, _find_report_files(paths)) if r is not None]
    if include_failed:
        return reports
    completed = [r for r in reports if _completed(r)]
    if len(completed) < len(reports):
        log.info("ignoring %d failed or interrupted run(s)", len(reports) - len(completed))
    return completed


def _completed(report: dict) -> bool:
    return report.get("status") == "completed"


def require_reports(reports: Sequence[dict], paths: Iterable[str | os.PathLike], skipped: int = 0) -> None:
    """Raise UsageError when there is nothing to compare, naming where we looked."""
    if reports:
        return
    where = ", ".join(str(p) for p in paths)
    if skipped:
        raise UsageError(f"no completed run under {where} ({skipped} failed or interrupted; "
                         "see --include-failed)")
    raise UsageError(f"no {REPORT_NAME} found under {where}")


def _find_report_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    found: dict[Path, None] = {}  # an ordered set: overlapping arguments must not count a run twice
    for path in map(Path, paths):
        if path.is_file():
            found.setdefault(path.resolve())
        elif path.is_dir():
            # os.walk does not follow directory symlinks, so a link loop cannot hang the search.
            for root, dirs, files in os.walk(path):
                dirs.sort()  # deterministic order, hence deterministic warnings and tie-breaking
                if REPORT_NAME in files:
                    found.setdefault((Path(root) / REPORT_NAME).resolve())
        else:
            raise UsageError(f"no such file or directory: {path}")
    return list(found)


def _read_report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("skipping unreadable %s: %s", path, err)
        return None
    if not isinstance(report, dict):
        log.warning("skipping %s: not a JSON object", path)
        return None
    report["report_path"] = str(path)
    return report


# --- summarising ------------------------------------------------------------------------------------------

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
                    "column (the config hash without seed and sparsity, in report.json)", ", ".join(by))
        return summarize(reports, (*by, "variant"))
    rows = [_summarize_group(dict(zip(by, key)), members) for key, members in groups.items()]
    return sorted(rows, key=lambda row: _sort_key(row, by))


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


def _summarize_group(keys: dict, members: list[dict]) -> dict:
    row = dict(keys)
    row["n"] = len(members)
    row["seeds"] = sorted({s for s in (_lookup(r, ("experiment", "seed")) for r in members) if s is not None},
                          key=_sortable)
    for name, where, _ in METRICS:
        values = [v for v in (_number(_lookup(r, where)) for r in members) if v is not None]
        row[f"{name}_mean"] = statistics.fmean(values) if values else None
        row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return row


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


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- writing ----------------------------------------------------------------------------------------------

def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Raw numbers (fractions, full precision) for further analysis; empty cells for missing values."""
    fields = _group_keys(rows) + ["n", "seeds"] + [f"{n}_{s}" for n, _, _ in METRICS for s in ("mean", "std")]
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
    lines += ["", "Cells: mean ± sample standard deviation over the n runs (seeds) of each row, in percent."]
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
    table = Table(title=title, caption="sparsity and accuracy in %: mean ± std over the n seeds",
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    shown = [i for i in range(len(headers)) if i not in constant]
    for i in shown:
        # Key columns keep a readable width; on a narrow terminal the numbers wrap at "±" instead.
        width = min(6, max((len(line[i]) for line in cells), default=0)) if i < n_keys else None
        table.add_column(_TERMINAL_HEADERS.get(headers[i], headers[i]), min_width=width,
                         justify="right" if _is_numeric_column(headers[i]) else "left")
    for line in cells:
        table.add_row(*(line[i] for i in shown))
    (console or Console()).print(table)


_TERMINAL_HEADERS = {"target sparsity (%)": "target", "achieved sparsity (%)": "sparsity",
                     "dense acc. (%)": "dense acc", "pruned acc. (%)": "pruned acc",
                     "fine-tuned acc. (%)": "tuned acc"}


def _display(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown file and the terminal table, so they never disagree."""
    keys = _group_keys(rows)
    headers = [_key_header(k) for k in keys] + ["n"] + [header for _, _, header in METRICS]
    cells = []
    for row in rows:
        line = [_key_cell(k, row.get(k)) for k in keys] + [str(row["n"])]
        line += [_mean_std_cell(row[f"{name}_mean"], row[f"{name}_std"]) for name, _, _ in METRICS]
        cells.append(line)
    return headers, cells


def _group_keys(rows: Sequence[dict]) -> list[str]:
    return [k for k in rows[0] if k not in _SUMMARY_FIELDS] if rows else list(DEFAULT_BY)


def _key_header(key: str) -> str:
    return "target sparsity (%)" if key == "target_sparsity" else key


def _key_cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "target_sparsity" and _number(value) is not None:
        return f"{100 * value:.2f}"
    return str(value)


def _mean_std_cell(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _is_numeric_column(header: str) -> bool:
    return header == "n" or header.endswith("(%)")


# --- plotting ---------------------------------------------------------------------------------------------

def plot(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Fine-tuned accuracy vs target sparsity, one line per strategy (and per any other varying group key),
    error bars of one std, and the dense accuracy as a dashed reference. Written as PNG."""
    # The object-oriented Figure API draws with Agg without touching pyplot's global state: no display
    # needed, no figures leaking between calls, nothing changed for a caller who uses pyplot themselves.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x_key = "target_sparsity" if rows and "target_sparsity" in rows[0] else "sparsity_achieved_mean"
    for label, series in _series(rows).items():
        points = sorted((100 * r[x_key], 100 * r["accuracy_finetuned_mean"], 100 * r["accuracy_finetuned_std"])
                        for r in series if _number(r.get(x_key)) is not None
                        and r["accuracy_finetuned_mean"] is not None)
        if points:
            xs, ys, errs = zip(*points)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    for style, (label, accuracy) in zip(itertools.cycle(("--", ":", "-.")), _dense_references(rows).items()):
        ax.axhline(100 * accuracy, color="0.35", linestyle=style, label=f"{label}: {100 * accuracy:.2f}%")
    ax.set_xlabel("target sparsity (%)" if x_key == "target_sparsity" else "achieved sparsity (%)")
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


# --- API and console entry --------------------------------------------------------------------------------

def compare(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike | None = None,
            by: Sequence[str] = DEFAULT_BY, include_failed: bool = False) -> list[dict]:
    """Summary rows for the runs below `paths`; with `out_dir`, also writes compare.csv/.md/.png there.

    Raises UsageError when no (completed) run is found or a group key is unknown.
    """
    paths = list(paths)
    every = collect_reports(paths, include_failed=True)
    reports = every if include_failed else [r for r in every if _completed(r)]
    require_reports(reports, paths, skipped=len(every) - len(reports))
    rows = summarize(reports, by)
    if out_dir is not None:
        write_all(rows, out_dir)
    return rows


def write_all(rows: Sequence[dict], out_dir: str | os.PathLike) -> None:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {out_dir}: {err.strerror}") from err
    write_csv(rows, out_dir / "compare.csv")
    write_markdown(rows, out_dir / "compare.md")
    plot(rows, out_dir / "compare.png")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message; return its code instead of exiting
        return exit_.code if isinstance(exit_.code, int) else 2
    out_dir = args.out if args.out is not None else _default_out_dir(args.paths[0])
    try:
        rows = compare(args.paths, out_dir=out_dir, by=args.by, include_failed=args.include_failed)
    except UsageError as err:
        print(f"prune-compare: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. no permission to write OUT_DIR: one line, not a traceback
        print(f"prune-compare: cannot write results to {out_dir}: {err}", file=sys.stderr)
        return 1
    print_table(rows)
    print(f"wrote compare.csv, compare.md, compare.png to {out_dir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune-compare",
        description="Summarise the report.json of many prune-run runs into one table and plot.")
    parser.add_argument("paths", nargs="+", metavar="DIR",
                        help="run or sweep directories, searched recursively (report.json files also work)")
    parser.add_argument("--out", metavar="OUT_DIR",
                        help="where to write compare.csv/.md/.png (default: DIR/compare for the first DIR)")
    parser.add_argument("--by", type=_parse_by, default=DEFAULT_BY, metavar="KEY,KEY",
                        help=f"group keys (default: {','.join(DEFAULT_BY)}); any experiment field works")
    parser.add_argument("--include-failed", action="store_true",
                        help="also summarise failed and interrupted runs (their missing metrics are skipped)")
    return parser


def _parse_by(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise argparse.ArgumentTypeError("expected comma-separated keys, e.g. strategy,target_sparsity")
    return keys


def _default_out_dir(first: str) -> Path:
    first_path = Path(first)
    return (first_path.parent if first_path.is_file() else first_path) / "compare"


if __name__ == "__main__":
    sys.exit(main())
