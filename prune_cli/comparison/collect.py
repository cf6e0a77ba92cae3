"""Finding and reading the report.json of many runs; one unreadable file never hides the rest."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from prune_cli.errors import UsageError

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"


def collect_reports(paths: Iterable[str | os.PathLike], include_failed: bool = False) -> list[dict]:
    """Every readable report.json below `paths` (directories, searched recursively, or report files).

    Corrupt or unreadable files are skipped with a warning: one broken run must not hide a whole sweep.
    Only completed runs are returned unless `include_failed`. Each report gains a `report_path` key.
    """
    reports = [r for r in map(_read_report, _find_report_files(paths)) if r is not None]
    if include_failed:
        return reports
    return completed_only(reports)


def completed_only(reports: list[dict]) -> list[dict]:
    """The completed runs; the others are named in one warning, never dropped without a word."""
    skipped = [r for r in reports if not completed(r)]
    if skipped:
        names = ", ".join(f"{r.get('report_path', '?')} ({r.get('status', 'no status')})" for r in skipped[:5])
        log.warning("left out %d failed or interrupted run(s): %s%s (--include-failed counts them)", len(skipped),
                    names, ", ..." if len(skipped) > 5 else "")
    return [r for r in reports if completed(r)]


def completed(report: dict) -> bool:
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
    from prune_cli.storage.safe_load import read_json
    try:
        report = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("skipping unreadable %s: %s", path, err)
        return None
    if not isinstance(report, dict):
        log.warning("skipping %s: not a JSON object", path)
        return None
    problem = malformed(report)
    if problem:
        log.warning("skipping %s: %s", path, problem)
        return None
    report["report_path"] = str(path)
    return report


_SCALAR = (str, int, float, bool, type(None))


def malformed(report: dict) -> str | None:
    """What keeps a report from being compared (a list where a number belongs, ...), or None.

    A failed or interrupted run's report holds only its status and error; a completed one must have the
    fields the summary reads, each of the right kind."""
    if not isinstance(report.get("status"), str):
        return "no status"
    if report["status"] != "completed":
        return None
    experiment = report.get("experiment")
    if not isinstance(experiment, dict) or not all(isinstance(v, _SCALAR) for v in experiment.values()):
        return "'experiment' is not a mapping of plain values"
    for section, fields in (("sparsity", ("target", "achieved")), ("accuracy", ("dense", "pruned", "finetuned"))):
        values = report.get(section)
        if not isinstance(values, dict):
            return f"{section!r} is not a mapping"
        for field in fields:
            value = values.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"{section}.{field} is {type(value).__name__}, not a number"
    return None
