"""What a run directory already holds, and the one rule for reusing it.

A directory may be reused by the same config (a finished run is left as it is, an unfinished one resumes);
one that holds another config's run is refused, before anything is written into it. The CLI applies this rule
before Hydra writes ``.hydra/``, the pipeline again before it reads ``state.pt``; both call ``refuse_other_config``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from prune_cli.errors import UsageError

REPORT = "report.json"
STATE = "state.pt"


def completed_report(run_dir) -> Optional[dict]:
    """The directory's report when it says ``completed``, else None."""
    try:
        data = json.loads((Path(run_dir) / REPORT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "completed" else None


def recorded_fingerprint(run_dir) -> Optional[tuple[str, str]]:
    """("completed" | "unfinished", fingerprint) of the run the directory holds, or None for no run."""
    report = completed_report(run_dir)
    if report is not None:
        return "completed", str(report.get("fingerprint"))
    state = Path(run_dir) / STATE
    if state.exists():
        from prune_cli.storage.safe_load import safe_load
        try:
            saved = safe_load(state)
        except UsageError:
            return None  # unreadable: the run reports it when it loads the state
        return "unfinished", str(saved.get("fingerprint")) if isinstance(saved, dict) else ""
    return None


# storage/atomic.py's temporary names: ".<final name>.<8 hex digits>.tmp".
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_leftovers(run_dir, completed: bool) -> list[str]:
    """Files a killed process left behind: half-written temporary files, and the resume state of a run that
    completed (the kill landed between the report and the state's removal). Returns their names."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = [p for p in run_dir.iterdir() if p.is_file() and _TEMPORARY.fullmatch(p.name)]
    if completed and (run_dir / STATE).exists():
        removed.append(run_dir / STATE)
    for path in removed:
        path.unlink(missing_ok=True)
    return [p.name for p in removed]


def refuse_other_config(run_dir, fingerprint: str) -> None:
    """Raise UsageError when ``run_dir`` holds a run of a config other than ``fingerprint``."""
    found = recorded_fingerprint(run_dir)
    if found is not None and found[1] != fingerprint:
        raise UsageError(f"hydra.run.dir={run_dir}: holds {'a completed' if found[0] == 'completed' else 'an unfinished'} "
                         f"run with a different config; choose another directory (nothing was changed)")
