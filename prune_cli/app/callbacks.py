"""Hydra callbacks: each finished job of a sweep gets one line, and a sweep that had failed jobs says which, and
exits non-zero.

A sweep (``prune-run -m``) runs every job even when some fail: ``cli.run_job`` records a failed, bad-input or
crashed job in its ``report.json`` and returns normally (a crash prints its traceback first), so Hydra's
sweeper sees every job finish and carries on. ``on_job_end`` reads the job's outcome from Hydra's public
``JobReturn`` (``status``, and ``return_value`` only when it completed) and prints one line.
``on_multirun_end`` then reads every job directory of the sweep and exits 1 naming each job that did not
complete.

Both hooks work with every launcher: ``on_job_end`` runs wherever the job runs (this process for the basic
launcher, a joblib worker, a SLURM node), ``on_multirun_end`` in the process that started the sweep, and they
share nothing but the files in the sweep directory.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import prune_cli.app.resolvers  # noqa: F401  (the path resolvers of conf/config.yaml)

REPORT = "report.json"
JOBS = ".jobs"  # <sweep dir>/.jobs/<job number>: the job's output directory
REFUSED = ".refused"  # <sweep dir>/.refused/<job number>: a job that did not run, and why (its directory may
                      # hold another run's completed report, which must not count as this job's)
NAME_LIMIT = 240  # bytes; most filesystems refuse a name over 255 ("File name too long")


def job_dirname(num, overrides) -> str:
    """``hydra.sweep.subdir``: ``<job number>_<overrides>``, shortened when the overrides are too long.

    ``overrides`` is the job's list of overrides (``hydra.overrides.task``), of which the result-neutral ones
    (``config.RESULT_NEUTRAL``) are left out and the rest sorted, as Hydra's ``override_dirname`` would with
    those keys excluded; or an already joined string. It holds every override given on the command line, fixed
    ones included, so a sweep with many settings easily passes the filesystem's 255-byte limit; Hydra would
    then crash the whole sweep on the first job. The job number keeps shortened names unique; the hash tells
    the full list apart.
    """
    if not isinstance(overrides, str):
        from prune_cli.config import result_neutral
        overrides = ",".join(sorted(str(o) for o in overrides if not result_neutral(str(o).partition("=")[0])))
    override_dirname = overrides
    # Zero-padded, so that a listing sorts jobs in order (000_, 001_, ..., 010_) for sweeps up to 1,000 jobs.
    name = path_part_keeping_length(f"{int(num):03d}_{override_dirname}")
    raw = name.encode()
    if len(raw) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(str(override_dirname).encode()).hexdigest()[:8]
    return raw[: NAME_LIMIT - 10].decode(errors="ignore") + f"~{digest}"


def path_part_keeping_length(name: str) -> str:
    """Override values may hold path separators (``strategy.name=/../../x``): a job directory never nests or
    escapes the sweep directory."""
    return name.replace("/", "_").replace("\\", "_").replace("\0", "_")


# Registered on import: Hydra instantiates the callbacks (importing this module) in the process that starts the
# sweep and unpickles them in every joblib worker and submitit job, before any job directory is resolved.
OmegaConf.register_new_resolver("prune_cli.job_dir", job_dirname, replace=True)


class SweepSummary(Callback):
    # Class-level, read by cli.main to tell bad input (exit 2) from failed jobs (exit 1) when Hydra exits 1.
    started: Any = False

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.started = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before Hydra writes multirun.yaml or any job directory: the sweep directory is opened, not trusted.
        from prune_cli.errors import UsageError
        from prune_cli.storage.run_dir import check_sweep_opening
        try:
            check_sweep_opening(config.hydra.sweep.dir)
        except UsageError as err:
            print(f"prune-run: {err}", file=sys.stderr)
            sys.exit(2)
        # Hydra composes each job's config (and rejects e.g. strategy=magnitude,nonexistent) only after this
        # hook, so a sweep counts as started once a job directory exists, not yet here.
        SweepSummary.started = _JobsLaunched(Path(config.hydra.sweep.dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Every job of a sweep leaves its directory's name in the sweep directory, so the summary counts it
        wherever the job wrote (an override can move a job's directory)."""
        import os
        if _mode(config) != RunMode.MULTIRUN or int(os.environ.get("SLURM_PROCID", "0")) > 0:
            return  # a job of several SLURM tasks: its first task records it
        hydra = config.hydra
        marker = Path(hydra.sweep.dir) / JOBS / f"{hydra.job.num}"
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(hydra.runtime.output_dir))
        except OSError as err:  # the job itself will report what is wrong with the directory
            print(f"prune-run: cannot record job {hydra.job.num} in {marker.parent}: {err.strerror}", file=sys.stderr)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if _mode(config) != RunMode.MULTIRUN:
            return
        hydra = config.hydra
        name = f"job {hydra.job.num} ({hydra.job.override_dirname or 'defaults'})"
        if job_return.status != JobStatus.COMPLETED:
            # Raised outside the task function (Hydra's own job set-up): Hydra re-raises it after the batch.
            print(f"prune-run: {name} crashed before it started", file=sys.stderr, flush=True)
            return
        print(f"prune-run: {name}: {_outcome(job_return.return_value)}", file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            return  # a dry run writes no reports
        sweep_dir = Path(config.hydra.sweep.dir)
        bad = [f"{name}: {problem}" for name, problem in sweep_problems(sweep_dir)]
        import shlex
        compare = f"prune-compare {shlex.quote(str(sweep_dir))}"
        if bad:
            print(f"prune-run: {len(bad)} job(s) of the sweep in {sweep_dir} did not complete:", file=sys.stderr)
            for line in bad:
                print(f"  {line}", file=sys.stderr)
            print(f"prune-run: compare the completed ones with: {compare}", file=sys.stderr)
            sys.exit(1)
        print(f"prune-run: every job of the sweep completed; compare them with: {compare}", file=sys.stderr)


def sweep_problems(sweep_dir: Path) -> list[tuple[str, str]]:
    """(job directory relative to the sweep, what went wrong) for every job that did not complete.

    A job directory is one Hydra wrote ``.hydra/`` into; one without ``report.json`` never finished (e.g. its
    process was killed). Directories are found recursively because an override value with a ``/`` in it
    nests the job's directory.
    """
    problems, root = [], sweep_dir.resolve()
    for job_dir in _job_dirs(sweep_dir):
        name = str(job_dir.relative_to(root)) if job_dir.is_relative_to(root) else str(job_dir)
        report = job_dir / REPORT
        if not report.exists():
            problems.append((name, f"no {REPORT}: the job did not finish (killed, or crashed before starting)"))
            continue
        try:
            data = json.loads(report.read_text())
            status, error = data.get("status"), data.get("error", "")
        except (OSError, ValueError, AttributeError):
            status, error = "unreadable", f"{REPORT} could not be read"
        if status != "completed":
            problems.append((name, f"{status}: {error}"))
    listed = {name for name, _ in problems}
    refused = sweep_dir / REFUSED
    for marker in sorted(refused.iterdir(), key=lambda m: m.name) if refused.is_dir() else ():
        where, _, error = marker.read_text().partition("\n")
        job_dir = Path(where).resolve()
        name = str(job_dir.relative_to(root)) if job_dir.is_relative_to(root) else str(job_dir)
        if name not in listed:
            problems.append((name, f"refused: {error.strip()}"))
    return problems


def record_refusal(hydra, error: str) -> None:
    """In a sweep, a job refused before it ran leaves a note for the summary (see ``REFUSED``)."""
    marker = Path(str(hydra.sweep.dir)) / REFUSED / f"{hydra.job.num}"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{hydra.runtime.output_dir}\n{error}")
    except OSError as err:
        print(f"prune-run: cannot record job {hydra.job.num} in {marker.parent}: {err.strerror}", file=sys.stderr)


class _JobsLaunched:
    """Truthy once the sweep directory holds a job directory: from then on an exit 1 means failed jobs."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir

    def __bool__(self) -> bool:
        return self.sweep_dir.is_dir() and bool(_job_dirs(self.sweep_dir))


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = {p.parent.resolve() for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    dirs |= {p.parent.resolve() for p in sweep_dir.rglob(REPORT)}  # also a job run with hydra.output_subdir=null
    jobs = sweep_dir / JOBS
    if jobs.is_dir():  # jobs whose directory is elsewhere (or was never created) are counted too
        dirs |= {Path(text).resolve() for text in (m.read_text().strip() for m in jobs.iterdir() if m.is_file())
                 if text}
    root = sweep_dir.resolve()
    return sorted(dirs, key=lambda d: _job_order(d.relative_to(root)) if d.is_relative_to(root) else (2, 0, str(d)))


def _job_order(relative: Path):
    head = relative.parts[0].split("_", 1)[0] if relative.parts else ""
    return (0, int(head), str(relative)) if head.isdigit() else (1, 0, str(relative))


def _mode(config: DictConfig):
    try:
        return config.hydra.mode
    except Exception:  # no hydra node: not a Hydra job
        return None


def _outcome(value) -> str:
    """One job's result in a few words: its test accuracy, or what kept it from completing."""
    if isinstance(value, dict) and value.get("status") == "completed":
        accuracy = (value.get("accuracy") or {}).get("finetuned")
        achieved = (value.get("sparsity") or {}).get("achieved")
        parts = [f"test accuracy {100 * accuracy:.2f}%" if isinstance(accuracy, (int, float)) else "completed"]
        if isinstance(achieved, (int, float)):
            parts.append(f"sparsity {100 * achieved:.2f}%")
        return ", ".join(parts)
    if isinstance(value, dict) and value.get("status"):
        return f"{value['status']}: {value.get('error', '')}".rstrip(": ")
    return "did not complete"
