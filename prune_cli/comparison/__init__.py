"""`prune-compare DIR...`: many runs' `report.json` -> one summary table (CSV, Markdown, terminal) and a plot.

Runs are grouped by experiment settings (by default model, dataset, strategy, schedule and target sparsity);
the seeds inside a group are summarised as mean and sample standard deviation, because on small test sets a
single run says little (one point of accuracy on digits is under four images).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from prune_cli.comparison.collect import collect_reports, completed_only, require_reports
from prune_cli.comparison.plot import plot, plot_costs
from prune_cli.comparison.render import print_table, write_csv, write_markdown
from prune_cli.comparison.summary import DEFAULT_BY, summarize
from prune_cli.errors import UsageError


def compare(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike | None = None,
            by: Sequence[str] = DEFAULT_BY, include_failed: bool = False, baseline: str | None = None) -> list[dict]:
    """Summary rows for the runs below `paths`; with `out_dir`, also writes compare.csv/.md/.png there.
    ``baseline``: a strategy every other row is compared with, paired by seed (``row["vs_baseline"]``).

    Raises UsageError when no (completed) run is found, a group key is unknown or the baseline is missing.
    """
    paths = list(paths)
    if out_dir is not None:
        check_out_dir(out_dir)  # before reading hundreds of reports
    every = collect_reports(paths, include_failed=True)
    reports = every if include_failed else completed_only(every)
    require_reports(reports, paths, skipped=len(every) - len(reports))
    rows = summarize(reports, by)
    if baseline is not None:
        from prune_cli.comparison.baseline import add_baseline
        add_baseline(rows, reports, by, baseline)
    if out_dir is not None:
        write_all(rows, out_dir)
    return rows


# Everything prune-compare writes (besides the temporary files of atomic writes, which start with a dot), and
# the one file of prune-run's that sits beside run directories (a sweep's record).
WRITTEN = ("compare.csv", "compare.md", "compare.png", "compare_macs.png", "compare_latency.png")
BESIDE_RUNS = ("multirun.yaml",)


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """An output directory is new, holds only directories (e.g. the runs compared), prune-run's sweep record
    or an earlier comparison: never a directory of the user's files (``--out /etc``, ``--out .`` in a
    project), which a comparison would mix with or replace. Nothing is written into subdirectories."""
    out_dir = Path(out_dir)
    try:
        names = os.listdir(out_dir)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UsageError(f"--out {out_dir}: exists and is not a directory; choose another") from None
    except OSError as err:
        raise UsageError(f"--out {out_dir}: cannot be used: {err.strerror or err}") from None
    foreign = sorted(n for n in names if n not in (*WRITTEN, *BESIDE_RUNS) and not n.startswith(".")
                     and not (out_dir / n).is_dir())
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"--out {out_dir}: holds files prune-compare did not write ({shown}); choose a new or "
                         f"empty directory (nothing was written)")


def write_all(rows: Sequence[dict], out_dir: str | os.PathLike) -> None:
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {out_dir}: {err.strerror}") from err
    write_csv(rows, out_dir / "compare.csv")
    write_markdown(rows, out_dir / "compare.md")
    plot(rows, out_dir / "compare.png")
    plot_costs(rows, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message; return its code instead of exiting
        return exit_.code if isinstance(exit_.code, int) else 2
    out_dir = args.out if args.out is not None else _default_out_dir(args.paths[0])
    try:
        rows = compare(args.paths, out_dir=out_dir, by=args.by, include_failed=args.include_failed,
                       baseline=args.baseline)
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
    parser.add_argument("--baseline", metavar="STRATEGY",
                        help="compare every other strategy with this one: the fine-tuned accuracy difference "
                             "paired by seed, with its 95%% interval (a tie when it contains 0)")
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
