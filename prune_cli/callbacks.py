"""Hydra callbacks: a sweep that had failed jobs says which, and exits non-zero."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    started = False  # class-level: read by cli.main to tell config errors from job failures

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.started = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.started = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        bad = []
        for report in sorted(sweep_dir.rglob("report.json")):
            try:
                status = json.loads(report.read_text()).get("status")
                error = json.loads(report.read_text()).get("error", "")
            except (OSError, ValueError):
                status, error = "unreadable", "report.json could not be read"
            if status != "completed":
                bad.append(f"{report.parent.name}: {status}: {error}")
        if bad:
            print(f"prune-run: {len(bad)} job(s) of the sweep in {sweep_dir} did not complete:", file=sys.stderr)
            for line in bad:
                print(f"  {line}", file=sys.stderr)
            sys.exit(1)
