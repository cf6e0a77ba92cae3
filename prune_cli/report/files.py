"""Writing a run's report files: atomically, and never a failed status over a completed report."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from prune_cli.report.jsonable import jsonable
from prune_cli.report.render import markdown
from prune_cli.storage.atomic import atomic_write_text
from prune_cli.storage.run_dir import REPORT, completed_report


def write_report(run_dir: Path, result: dict) -> None:
    """history.png and report.md first, report.json last: a reader seeing ``completed`` finds everything else
    written."""
    from prune_cli.report.history_plot import NAME, draw_history
    try:
        draw_history(result.get("history") or [], Path(run_dir) / NAME, title=_title(result, run_dir))
    except OSError:
        raise  # a full disk or an unwritable directory: the run says so
    except Exception as err:  # noqa: BLE001 - a picture must not cost the run its report
        logging.getLogger("prune_cli").warning("history.png not drawn: %s: %s", type(err).__name__, err)
    atomic_write_text(Path(run_dir) / "report.md", markdown(result))
    atomic_write_text(Path(run_dir) / REPORT, json.dumps(result, indent=2) + "\n")


def _title(result: dict, run_dir: Path) -> str:
    experiment = result.get("experiment") or {}
    target = (result.get("sparsity") or {}).get("target")
    what = " / ".join(str(experiment[k]) for k in ("strategy", "schedule", "model", "dataset") if experiment.get(k))
    return f"{what}, sparsity {target:g}, seed {experiment.get('seed')} ({Path(run_dir).name})" \
        if target is not None else Path(run_dir).name


def write_status(run_dir: Path, status: str, error: str) -> None:
    """A failed or interrupted run still says so, unless a completed report is already there to keep. A
    directory that cannot take even this (a full disk) is left as it is: the caller has its one line."""
    if completed_report(run_dir) is not None:
        return
    try:
        atomic_write_text(Path(run_dir) / REPORT,
                          json.dumps(jsonable({"status": status, "error": error}), indent=2) + "\n")
    except OSError:
        pass
