"""Before Hydra writes anything: the run directory a command would use, resolved as Hydra will resolve it,
and the one rule for a directory that already holds a run.

Hydra writes ``DIR/.hydra/`` and its log as soon as it starts, so these checks come first and see the
command's own spelling of the directory (``hydra.run.dir=``, ``++hydra.run.dir=``, a ``--config-dir`` whose
config sets it, the default). A directory holding a run:
- of another config: refused (exit 2), nothing touched;
- of this config, completed: its report is shown, nothing touched (exit 0);
- of this config, unfinished: the whole config is checked first, as the run would check it, so a command
  refused for a bad value leaves the directory byte for byte as it was; then the run resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from prune_cli.errors import UsageError


def _parser():
    """The command line as ``@hydra.main`` reads it (Hydra 1.3's documented flags, docs: "Hydra's command line
    flags"); Hydra's own parser is not public API, so its flags are spelled out here."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r"),
                  ("--multirun", "-m"), ("--shell-completion", "-sc")):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                  ("--config-dir", "-cd"), ("--experimental-rerun",)):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def _parsed(argv: list[str]):
    import argparse
    try:
        return _parser().parse_args(argv)
    except (SystemExit, argparse.ArgumentError):
        return None  # Hydra will print its own usage message


def resolved_run_dir(argv: list[str]) -> Optional[tuple[Path, object]]:
    """(run directory, composed run config) of a single-run command, or None (a sweep, --help, ...).

    An override Hydra cannot parse or apply is bad input: one line and exit 2, before Hydra prints its
    several (an unknown group option names the closest option and lists them all)."""
    args = _parsed(argv)
    if args is None or args.multirun or args.help or args.hydra_help or args.version or args.cfg or args.info \
            or args.shell_completion or args.experimental_rerun or args.config_path:
        return None  # (a --config-path is resolved by Hydra from the caller: the run checks it itself)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict
    from prune_cli.config import CONFIG_DIR
    import prune_cli.app.resolvers  # noqa: F401
    overrides = list(args.overrides)
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]")
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=args.config_name or "config", overrides=overrides, return_hydra_config=True)
        from hydra.core.hydra_config import HydraConfig
        HydraConfig.instance().set_config(cfg)  # so that ${hydra:...} in the run's keys resolves as in the run
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
        with open_dict(cfg):
            cfg.pop("hydra")
        OmegaConf.resolve(cfg)
    except Exception as err:  # noqa: BLE001 - Hydra's override and composition errors, unknown options too
        _bad_override(err, overrides)
    finally:
        GlobalHydra.instance().clear()
    return run_dir, cfg


def check_sweep(argv: list[str]) -> None:
    """A sweep (``-m``): every value of every swept key composed on its own (the other keys at their first
    value), so an unknown option or key is one line and exit 2 before Hydra starts the sweep, as for a single
    run. Values are checked by each job (a refused job is named and the others run)."""
    args = _parsed(argv)
    if args is None or not args.multirun or args.help or args.hydra_help or args.cfg or args.info \
            or args.config_path or args.experimental_rerun:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    try:
        parsed = OverridesParser.create().parse_overrides(list(args.overrides))
        base, swept = [], []
        for index, override in enumerate(parsed):
            if override.is_sweep_override():
                values = list(override.sweep_string_iterator())
                swept.append((index, override.get_key_element(), values))
                base.append(f"{override.get_key_element()}={values[0]}")
            else:
                base.append(override.input_line)
    except Exception:  # noqa: BLE001 - a glob sweep, a grammar error: Hydra answers those itself
        return
    combinations = [base] + [[*base[:i], f"{key}={value}", *base[i + 1:]] for i, key, values in swept
                             for value in values[1:]]
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from prune_cli.config import CONFIG_DIR
    import prune_cli.app.resolvers  # noqa: F401
    for overrides in combinations:
        if args.config_dir:
            overrides = [*overrides, f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"]
        try:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                compose(config_name=args.config_name or "config", overrides=overrides)
        except OverrideParseException:
            return  # a value re-spelled here that Hydra's own spelling parses (quoting): leave it to Hydra
        except Exception as err:  # noqa: BLE001 - unknown options and keys
            _bad_override(err, overrides)
        finally:
            GlobalHydra.instance().clear()


def _bad_override(err: Exception, overrides) -> None:
    from prune_cli.config import composition_error
    print(f"prune-run: {composition_error(err, overrides)}", file=sys.stderr)
    sys.exit(2)


def guard(argv: list[str]) -> Optional[Path]:
    """Apply the rules above; exits (2, or 0 for a completed run) when Hydra must not start. Returns the run
    directory as decided (``run_dir.decide``), made and locked for this process, which the caller hands to
    Hydra so that the checks and the writes use the same directory; None when there is no single run."""
    check_sweep(argv)
    found = resolved_run_dir(argv)
    if found is None:
        return None
    run_dir, cfg = found
    if cfg.get("dry_run"):
        _dry_run(cfg)
    from prune_cli.storage.run_dir import (check_opening, completed_report, decide, lock, recorded_fingerprint,
                                           refuse_other_config)
    decided = decide(run_dir)
    try:
        from prune_cli.loggers import files as logger_files
        from prune_cli.config import plain
        check_opening(run_dir, also=logger_files(plain(cfg.get("logger"))))
    except UsageError as err:
        print(f"prune-run: {err}", file=sys.stderr)
        sys.exit(2)
    if recorded_fingerprint(decided) is None:
        _refuse_bad_values(cfg)  # before Hydra makes the directory: bad input leaves nothing behind
        _check_writable(run_dir, decided)
    else:
        from prune_cli.config import fingerprint
        try:
            refuse_other_config(decided, fingerprint(cfg), shown=run_dir)
            from prune_cli.validate import validate
            validate(cfg)  # this config's run: bad values are refused even where they cannot change the result
            finished = completed_report(decided)
            if finished is None:
                from prune_cli.app.dry_run import make_plan
                from prune_cli.storage.resume import RunState
                make_plan(cfg)  # every check the run makes before training, with the same functions
                RunState(decided, fingerprint(cfg), 0.0).load()  # a state.pt of the wrong types: one line
        except UsageError as err:
            print(f"prune-run: {err}", file=sys.stderr)
            sys.exit(2)
        if finished is not None:
            from rich.console import Console
            from prune_cli.report.render import console_table
            from prune_cli.storage.run_dir import remove_leftovers
            console_table(finished, Console())
            removed = remove_leftovers(decided, completed=True)
            note = f"; removed what a killed process left: {', '.join(removed)}" if removed else \
                "; nothing was changed"
            print(f"prune-run: this run is already complete in {run_dir}{note}", file=sys.stderr)
            sys.exit(0)
    try:
        decided.mkdir(parents=True, exist_ok=True)
        lock(decided)  # held until this process ends; the run takes the same lock again
    except UsageError as err:
        print(f"prune-run: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"prune-run: hydra.run.dir={run_dir}: cannot be created: {err.strerror or err}", file=sys.stderr)
        sys.exit(2)
    return decided


def with_run_dir(argv: list[str], decided: Path) -> list[str]:
    """``argv`` with its run directory given as decided (replacing any ``hydra.run.dir=`` override)."""
    kept = [a for a in argv if a.lstrip("+").split("=", 1)[0] != "hydra.run.dir"]
    quoted = str(decided).replace("\\", "\\\\").replace("'", "\\'")
    return [*kept, f"hydra.run.dir='{quoted}'"]


def _dry_run(cfg) -> None:
    """The plan, printed before Hydra starts: a dry run leaves no run directory behind (exit 0, or 2 with one
    line for bad input)."""
    from prune_cli.app.dry_run import print_plan
    try:
        print_plan(cfg)
    except UsageError as err:
        print(f"prune-run: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


def _refuse_bad_values(cfg) -> None:
    """Every check the run makes before training (the dry run's plan, with the run's own functions), so bad
    input and contradictions between keys are refused before Hydra makes the directory."""
    from prune_cli.app.dry_run import make_plan
    try:
        make_plan(cfg)
    except UsageError as err:
        print(f"prune-run: {err}", file=sys.stderr)
        sys.exit(2)


def _check_writable(run_dir: Path, decided: Path) -> None:
    """A run directory that cannot be created is one line, not Hydra's traceback."""
    import os
    existing = decided
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        print(f"prune-run: hydra.run.dir={run_dir}: {existing} {what}; choose another directory", file=sys.stderr)
        sys.exit(2)
