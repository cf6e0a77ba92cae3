"""What a run directory already holds, the rules for using it, and its lock.

A directory is opened, not trusted (``check_opening``):
- it is decided once, as the operating system will resolve it (``decide``: symbolic links of existing parts
  and ``..`` against real paths, so ``x/../DONE`` is ``DONE`` even where ``x`` does not exist yet);
- the launch directory itself is refused (a run would mix its files with the user's);
- a directory holding anything prune-run does not write, or a symbolic link where prune-run writes, is refused;
- one that holds another config's run is refused; the same config's finished run is left as it is and an
  unfinished one resumes (``refuse_other_config``).
The CLI applies these before Hydra writes ``.hydra/``, the pipeline again before it reads ``state.pt``.
While a run uses its directory it holds a lock there (``lock``): a second command on the same directory is
refused with one line naming the holder's process id.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from prune_cli.errors import UsageError

REPORT = "report.json"
STATE = "state.pt"
LOCK, HOLDER = ".prune-run.lock", ".prune-run.pid"
# Everything a run may write into its directory (besides the temporary files of atomic writes).
WRITTEN = (".hydra", "prune-run.log", REPORT, "report.md", "pruned.pt", "quantized.pt", STATE, "metrics.csv",
           "history.png", "tensorboard", "mlruns", LOCK, HOLDER)
# What Hydra writes as a run starts, before any of our own files: a run refused then leaves only these.
STARTED = (".hydra", "prune-run.log", LOCK, HOLDER)


def decide(run_dir) -> Path:
    """The directory a run will really use: absolute, with symbolic links of its existing parts and ``..``
    resolved against real paths (what ``os.makedirs`` and every later open will reach)."""
    return Path(os.path.realpath(os.path.expanduser(str(run_dir))))


def check_opening(run_dir, launch_dir=None, also=()) -> None:
    """Refuse (UsageError, one line) a run directory that is the launch directory, is not a directory, holds
    a symbolic link where a run writes, or holds files a run does not write (a user's own files). ``also``:
    names this run's config writes besides the usual ones (a logger's file name)."""
    written = (*WRITTEN, *also)
    real = decide(run_dir)
    launch = decide(launch_dir if launch_dir is not None else os.getcwd())
    key = f"hydra.run.dir={run_dir}"
    if real == launch or real in launch.parents:
        raise UsageError(f"{key}: is the launch directory{' or above it' if real != launch else ''}; a run needs "
                         f"a directory of its own (e.g. hydra.run.dir=outputs/runs/NAME)")
    try:
        os.lstat(real)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        blocking = next(p for p in real.parents if os.path.lexists(p))  # the part that is a file
        raise UsageError(f"{key}: {blocking} is not a directory; choose another directory") from None
    except OSError as err:  # a name too long for the file system, no permission
        raise UsageError(f"{key}: cannot be used: {err.strerror or err}; choose another directory") from None
    if not real.is_dir():
        raise UsageError(f"{key}: {real} exists and is not a directory; choose another directory")
    names = sorted(os.listdir(real))
    links = [n for n in names if (n in written or _TEMPORARY.fullmatch(n)) and os.path.islink(real / n)]
    if links:
        raise UsageError(f"{key}: {real / links[0]} is a symbolic link where prune-run writes; prune-run never "
                         f"writes through links: remove it or choose another directory")
    foreign = [n for n in names if n not in written and not _TEMPORARY.fullmatch(n)]
    if not foreign and any(n not in STARTED and not _TEMPORARY.fullmatch(n) for n in names) \
            and not _holds_a_run(real):
        foreign = [n for n in names if n not in STARTED]  # e.g. a report.json of the user's, with no status
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"{key}: holds files prune-run did not write ({shown}); choose an empty or new "
                         f"directory (nothing was changed)")


# What a sweep directory holds: Hydra's record of the sweep, our job markers, the jobs' own directories
# ("<number>_<overrides>", each checked as a run directory when its job starts) and prune-compare's output.
SWEEP_WRITTEN = ("multirun.yaml", ".jobs", ".refused", "compare")
_JOB_DIR = re.compile(r"\d+(_.*)?")


def check_sweep_opening(sweep_dir, launch_dir=None) -> None:
    """The sweep directory's version of ``check_opening``: not the launch directory, no link where a sweep
    writes, nothing but an earlier sweep's files (so re-running a sweep reuses its completed jobs)."""
    real = decide(sweep_dir)
    launch = decide(launch_dir if launch_dir is not None else os.getcwd())
    key = f"hydra.sweep.dir={sweep_dir}"
    if real == launch or real in launch.parents:
        raise UsageError(f"{key}: is the launch directory{' or above it' if real != launch else ''}; a sweep needs "
                         f"a directory of its own (e.g. hydra.sweep.dir=outputs/sweeps/NAME)")
    try:
        names = sorted(os.listdir(real))
    except FileNotFoundError:
        return
    except OSError as err:
        raise UsageError(f"{key}: cannot be used: {err.strerror or err}; choose another directory") from None
    links = [n for n in names if (n in SWEEP_WRITTEN or _JOB_DIR.fullmatch(n)) and os.path.islink(real / n)]
    if links:
        raise UsageError(f"{key}: {real / links[0]} is a symbolic link where prune-run writes; prune-run never "
                         f"writes through links: remove it or choose another directory")
    foreign = [n for n in names if n not in SWEEP_WRITTEN and not (
        (real / n).is_dir() and (_JOB_DIR.fullmatch(n) or _holds_a_run(real / n)))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"{key}: holds files prune-run did not write ({shown}); choose an empty or new "
                         f"directory (nothing was changed)")


def _holds_a_run(real: Path) -> bool:
    """Whether the directory's files are a run's: a report with a status, a resume state, or the lock holder's
    note of a run that started (one in progress has written no state yet)."""
    from prune_cli.storage.safe_load import read_json
    try:
        report = read_json(real / REPORT) if (real / REPORT).is_file() else None
    except (OSError, ValueError):
        report = None
    return (isinstance(report, dict) and report.get("status") in ("completed", "failed", "interrupted")) \
        or (real / STATE).is_file() or (real / HOLDER).is_file()


_locks: dict = {}


def lock(run_dir):
    """Take the run directory's lock for this process (re-entrant: the CLI's guard and the run share it), or
    raise UsageError naming the process that holds it. Returns the lock; ``release`` it when done."""
    from filelock import FileLock, Timeout
    real = decide(run_dir)
    held = _locks.get(real)
    if held is None:
        held = _locks[real] = FileLock(str(real / LOCK), timeout=0)
    try:
        held.acquire()
    except Timeout:
        try:
            holder = (real / HOLDER).read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise UsageError(f"hydra.run.dir={run_dir}: another prune-run (PID {holder}) is using this directory; "
                         f"wait for it to end or choose another directory") from None
    if held.lock_counter == 1:
        from prune_cli.storage.atomic import atomic_write_text
        atomic_write_text(real / HOLDER, f"{os.getpid()}\n")
    return held


def completed_report(run_dir) -> Optional[dict]:
    """The directory's report when it says ``completed``, else None."""
    from prune_cli.storage.safe_load import read_json
    try:
        data = read_json(Path(run_dir) / REPORT)
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


def refuse_other_config(run_dir, fingerprint: str, shown=None) -> None:
    """Raise UsageError when ``run_dir`` holds a run of a config other than ``fingerprint`` (``shown``: the
    directory as the user wrote it)."""
    found = recorded_fingerprint(run_dir)
    if found is not None and found[1] != fingerprint:
        raise UsageError(f"hydra.run.dir={shown if shown is not None else run_dir}: holds {'a completed' if found[0] == 'completed' else 'an unfinished'} "
                         f"run with a different config; choose another directory (nothing was changed)")


def unlock(run_dir) -> None:
    """Give the run directory's lock up entirely (the CLI, when its command ends)."""
    held = _locks.pop(decide(run_dir), None)
    if held is not None:
        held.release(force=True)
