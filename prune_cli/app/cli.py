"""``prune-run``: a thin Hydra entry. Config -> Experiment.run(); errors -> one line and an exit code.

Exit codes: 0 completed, 1 failed (e.g. a non-finite loss, or a sweep with failed jobs), 2 bad input,
130 interrupted (Ctrl-C). Torch is imported only once a job runs, so ``--help`` stays quick.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from prune_cli.config import CONFIG_DIR
from prune_cli.errors import RunFailed, UsageError

log = logging.getLogger("prune_cli")
STARTING = "starting: loading torch, the data and the model"
_composed = False   # set once Hydra composed a config: failures before that are bad input (exit 2)


def _progress(cfg: DictConfig, multirun: bool):
    wanted = cfg.get("progress", "auto")
    if wanted == "auto":
        wanted = sys.stderr.isatty() and not multirun
    if not wanted:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def run_job(cfg: DictConfig) -> dict | None:
    """One run in its Hydra output directory. In a sweep, failures are recorded and the sweep goes on."""
    global _composed
    _composed = True
    import prune_cli.distributed as distributed
    joined = distributed.join_job_tasks()  # a SLURM job of several tasks: one experiment across them
    try:
        if not distributed.is_main():
            return None if cfg.get("dry_run") else _other_rank(cfg)
        return _run_job(cfg)
    finally:
        if joined:
            distributed.stop()


def _run_job(cfg: DictConfig) -> dict | None:
    """``run_job`` for rank 0, or the only process."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = f"job {hydra_cfg.job.num} ({hydra_cfg.job.override_dirname or 'defaults'})" if multirun else "run"
    from prune_cli.report import files as reporting
    if cfg.get("dry_run"):
        from prune_cli.app.dry_run import print_plan
        try:
            print_plan(cfg)
        except UsageError as err:
            return _fail(f"prune-run: {err}", 2, multirun, job, str(err))
        return None
    try:
        progress = _progress(cfg, multirun)
        with stop_signals(), (progress if progress is not None else contextlib.nullcontext()):
            # On a terminal, say something at once: torch, the data and the model take seconds to load.
            starting = progress.add_task(STARTING, total=None) if progress is not None else None
            from prune_cli.pipeline.experiment import Experiment
            experiment = Experiment(cfg, run_dir, progress, overrides=list(hydra_cfg.overrides.task))
            if starting is not None:
                progress.remove_task(starting)
            result = experiment.run()
    except UsageError as err:
        reporting.write_status(run_dir, "failed", str(err))
        return _fail(f"prune-run: {err}", 2, multirun, job, str(err))
    except RunFailed as err:
        reporting.write_status(run_dir, "failed", str(err))
        return _fail(f"prune-run: {job} failed: {err}", 1, multirun, job, str(err))
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        why = "by the user (Ctrl-C)" if signum == signal.SIGINT else f"by {signal.Signals(signum).name}"
        reporting.write_status(run_dir, "interrupted", f"interrupted {why}; re-run the same command with the "
                               f"same hydra.run.dir to resume")
        print(f"prune-run: interrupted {why}; state kept in {run_dir} for resuming", file=sys.stderr)
        sys.exit(128 + int(signum))
    except OSError as err:  # an unwritable or full run directory: one line, never a traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"prune-run: {job} could not write its files{where}: {err.strerror or err}", file=sys.stderr)
        reporting.write_status(run_dir, "failed", f"could not write its files: {err.strerror or err}")
        return _fail("", 1, multirun, job, f"could not write its files: {err.strerror or err}")
    except Exception as err:
        if _peer_gone(err):
            # Across processes: another rank stopped (killed, or torchrun ended it) while this one waited for it.
            reporting.write_status(run_dir, "interrupted", "interrupted: another process of the run stopped; "
                                   "re-run the same command with the same hydra.run.dir to resume")
            print(f"prune-run: interrupted: another process of the run stopped; state kept in {run_dir} for "
                  f"resuming", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        # A bug, not bad input: keep the traceback, and never leave a run looking finished. A single run lets
        # Hydra print it; in a sweep it is printed here and the sweep goes on (the summary names the job).
        reporting.write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
        if not multirun:
            raise
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        print(f"prune-run: {job} crashed; the sweep goes on:\n{text}", file=sys.stderr, end="", flush=True)
        return _fail("", 1, multirun, job, f"{type(err).__name__}: {err}")
    from rich.console import Console
    if not multirun:
        from prune_cli.report.render import console_table
        console_table(result, Console(stderr=False))
    log.info("report written to %s", run_dir / "report.json")
    return result


def _other_rank(cfg: DictConfig) -> None:
    """A rank other than 0 of a run across processes: the same experiment, silently. Rank 0 prints and writes
    every file, failures included; this one exits with the same code, or, as a task of a sweep's job (SLURM),
    returns the failure like rank 0 does, so the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    logging.getLogger("prune_cli").setLevel(logging.ERROR)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        try:
            return _other_rank_run(cfg, hydra_cfg)
        except BaseException as err:  # noqa: BLE001 - rank 0 reports the job; this task only must not abort it
            return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return _other_rank_run(cfg, hydra_cfg)


def _other_rank_run(cfg: DictConfig, hydra_cfg) -> None:
    import prune_cli.distributed as distributed
    try:
        with stop_signals():
            from prune_cli.pipeline.experiment import Experiment
            Experiment(cfg, Path(hydra_cfg.runtime.output_dir), None, overrides=list(hydra_cfg.overrides.task)).run()
    except distributed.MainFailed as err:  # rank 0 failed where it worked alone, and says why
        distributed.linger()
        sys.exit(err.code)
    except UsageError:
        distributed.linger()
        sys.exit(2)
    except RunFailed:
        distributed.linger()
        sys.exit(1)
    except KeyboardInterrupt as err:
        sys.exit(128 + int(err.signum if isinstance(err, Stopped) else signal.SIGINT))
    except Exception as err:
        if not _peer_gone(err):
            raise
        sys.exit(128 + signal.SIGTERM)
    return None


def _peer_gone(err: BaseException) -> bool:
    """Whether ``err`` is a collective operation failing because another process of the run went away."""
    import prune_cli.distributed as distributed
    if not distributed.active():
        return False
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                  "NCCL communicator was aborted", "Connection refused"))


class Stopped(KeyboardInterrupt):
    """A stop signal other than Ctrl-C (SIGTERM from a scheduler, SIGUSR1 before a time limit)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals():
    """SIGTERM, SIGUSR1 and SIGHUP end a run like Ctrl-C: the resume state on disk stays, the report says
    ``interrupted``, the exit code is 128 + the signal. Only signals nobody else handles are taken: under
    submitit's launcher its own handlers stay, and requeue the job, which then resumes from that state."""
    taken = {}
    # SIGHUP: the terminal (an SSH session) went away; the run stops the same resumable way.
    for signum in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
            taken[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, previous in taken.items():
            signal.signal(signum, previous)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def _fail(message: str, code: int, multirun: bool, job: str, error: str):
    if message:
        print(message, file=sys.stderr)
    if multirun:  # the sweep goes on; prune_cli.app.callbacks.SweepSummary names the job and exits non-zero
        from prune_cli.app.callbacks import record_refusal
        record_refusal(HydraConfig.get(), error)
        return {"status": "failed", "error": error}
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig):
    result = run_job(cfg)
    if cfg.get("objective"):  # a sweeper (Optuna) optimises this number; a failed run is a failed trial
        from prune_cli.objectives import objective_value
        return objective_value(result, str(cfg.objective), float(cfg.get("objective_budget", 0.01)))
    return result


def main() -> None:
    global _composed
    _composed = False
    # As with ``python -m``: a user's own strategy, schedule or model module in the launch directory is
    # importable by its ``_target_``. Appended, so it never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    from prune_cli.app.callbacks import SweepSummary
    SweepSummary.started = False
    import prune_cli.distributed as distributed
    from prune_cli.app.guard import guard, with_run_dir
    argv = sys.argv
    if distributed.launched():  # started by torchrun: one experiment across its processes
        decided = _guard_across_processes(argv[1:])
        sys.argv = [argv[0], *with_run_dir(argv[1:], decided)]
        if not distributed.is_main():  # Hydra writes its config record and log from rank 0 only
            sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    else:
        decided = guard(argv[1:])
    if decided is not None and not distributed.launched():  # Hydra writes where the checks looked
        sys.argv = [argv[0], *with_run_dir(argv[1:], decided)]
    try:
        _hydra_main()
    except SystemExit as exit_:
        # Hydra exits 1 on config errors (unknown group option, bad override) after printing its own
        # message with the available choices; those are bad input, so exit 2 like our own checks.
        if exit_.code == 1 and not _composed and not _callbacks_composed():
            sys.exit(2)
        raise
    finally:
        sys.argv = argv
        if decided is not None and distributed.is_main():
            from prune_cli.storage.run_dir import unlock
            unlock(decided)
        distributed.stop()


def _guard_across_processes(args: list[str]) -> Path:
    """Under torchrun: rank 0 checks the command (the guard: one line for bad input, printed once) and decides
    the run directory; every rank then takes its decision, or exits with its code. A sweep is refused: torchrun
    runs one experiment across its processes."""
    import prune_cli.distributed as distributed
    from prune_cli.app.guard import guard
    distributed.start()
    code, decided = None, None
    if distributed.is_main():
        try:
            if any(a in ("-m", "--multirun") for a in args):
                print("prune-run: -m: a sweep cannot run under torchrun, which runs one experiment across its "
                      "processes; run each job under torchrun, or sweep with hydra/launcher=submitit_slurm",
                      file=sys.stderr)
                sys.exit(2)
            if any(a in ("--config-path", "-cp") or a.startswith("--config-path=") for a in args):
                print("prune-run: --config-path: not under torchrun (every process must read the same config); "
                      "use --config-dir", file=sys.stderr)
                sys.exit(2)
            decided = guard(args)
            if decided is None:  # --help, --cfg and the like: Hydra answers them, on rank 0 alone
                code = "hydra"
        except SystemExit as exit_:
            code = exit_.code if exit_.code is not None else 0
        except BaseException as err:  # noqa: BLE001 - the others must not wait for a decision that never comes
            print(f"prune-run: {type(err).__name__}: {err}", file=sys.stderr)
            code = 1
    code, decided = distributed.broadcast((code, decided))
    if code == "hydra":
        if distributed.is_main():
            distributed.stop()
            _hydra_main()
        sys.exit(0)
    if code is not None:
        distributed.stop()
        sys.exit(code)
    return decided


def _callbacks_composed() -> bool:
    from prune_cli.app.callbacks import SweepSummary
    return SweepSummary.started


def console_main() -> None:
    """The ``prune-run`` command: ``main`` with the terminal's "starting..." line around it, then an ordinary
    exit (so atexit handlers, e.g. MLflow's and TensorBoard's, run). The standard streams are given back as
    they were before the exit."""
    from prune_cli.app.starting import showing_start
    code = 0
    with showing_start():
        try:
            main()
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
                code = 1
            else:
                code = int(exit_.code or 0)
        except KeyboardInterrupt:  # Ctrl-C while the config is checked or torch loads: no run has started yet
            print("prune-run: interrupted by the user (Ctrl-C) before the run started", file=sys.stderr)
            code = 128 + signal.SIGINT
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # `prune-run | head` closed the pipe: nothing more to show
            with contextlib.suppress(OSError, ValueError):
                # Python flushes stdout again at exit; point it at nothing so that flush cannot fail.
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    sys.exit(code)


if __name__ == "__main__":
    # ``python -m prune_cli.app.cli`` runs the imported module, as ``prune-run`` does: functions of __main__
    # would travel to a sweep's workers by value (pickled with their globals, for every job), not by name.
    from prune_cli.app.cli import console_main as _console_main
    _console_main()
