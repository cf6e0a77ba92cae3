"""Metric loggers, one config option each (``conf/logger/``), several at once (``logger=[csv,tensorboard]``).

Each gets every epoch's history entry (``{"stage", "epoch", "epochs", "loss", "lr", "seconds",
["val_accuracy"]}``) as it happens and the final report's headline numbers at the end:

- ``csv`` (the default): ``metrics.csv`` in the run directory, one row per epoch, flushed as written.
- ``tensorboard``: event files under ``<run dir>/tensorboard`` (needs ``pip install 'prune-cli[tensorboard]'``).
- ``mlflow``: a run in a local file store (``<run dir>/mlruns`` unless ``tracking_uri`` says otherwise; needs
  ``pip install 'prune-cli[mlflow]'``).

A missing optional package is one line naming the extra to install, before any training.
"""
from __future__ import annotations

import csv
import os
import importlib.util
from pathlib import Path
from typing import Mapping, Optional

from prune_cli.errors import UsageError

FIELDS = ("stage", "epoch", "epochs", "loss", "lr", "seconds", "val_accuracy", "cached", "train_accuracy")
KEYS = {"csv": ("filename",), "tensorboard": ("dir",), "mlflow": ("tracking_uri", "experiment")}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def files(loggers: Optional[Mapping]) -> tuple[str, ...]:
    """The names the configured loggers write in a run directory (``logger.csv.filename``, ...)."""
    return tuple(str(options[key]) for name, options in (loggers or {}).items() if isinstance(options, Mapping)
                 for key in ("filename", "dir") if options.get(key))


def check(loggers: Optional[Mapping]) -> None:
    """``logger`` as the config has it: known loggers, their known keys, their packages installed."""
    for name, options in (loggers or {}).items():
        if name not in KEYS:
            raise UsageError(f"logger.{name}: unknown logger; there are {', '.join(KEYS)} (logger=[csv,tensorboard])")
        if not isinstance(options, Mapping):
            raise UsageError(f"logger.{name}={options!r}: must be a mapping of its options ({', '.join(KEYS[name])})")
        for key, value in options.items():
            if key not in KEYS[name]:
                raise UsageError(f"logger.{name}.{key}: unknown key; logger {name} takes {', '.join(KEYS[name])}")
            if key in ("filename", "dir") and not _plain_name(value):
                raise UsageError(f"logger.{name}.{key}={value!r}: must be a plain file name inside the run directory")
            if key in ("tracking_uri", "experiment") and value is not None and not isinstance(value, str):
                raise UsageError(f"logger.{name}.{key}={value!r}: must be a string or null")
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise UsageError(f"logger={name}: the {package} package is not installed; pip install "
                             f"'prune-cli[{name}]' (or choose logger=csv)")


def _plain_name(value) -> bool:
    return isinstance(value, str) and bool(value) and Path(value).name == value and value not in (".", "..")


class CSVLogger:
    """Rewritten from the run's history when (re)opened, so a resumed run's file has each epoch once."""

    def __init__(self, run_dir: Path, history: list, filename: str = "metrics.csv"):
        self.path = Path(run_dir) / str(filename)
        # Never through a link planted where the file goes (O_NOFOLLOW refuses one with ELOOP).
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
        self.file = open(descriptor, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=FIELDS, extrasaction="ignore")
        self.writer.writeheader()
        for entry in history:
            self.writer.writerow(entry)
        self.file.flush()

    def log_epoch(self, entry: dict) -> None:
        self.writer.writerow(entry)
        self.file.flush()

    def log_final(self, report: dict) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    def __init__(self, run_dir: Path, history: list, dir: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(run_dir) / str(dir)))

    def log_epoch(self, entry: dict) -> None:
        stage = entry["stage"]
        for key in ("loss", "train_accuracy", "lr", "val_accuracy"):
            if key in entry:
                self.writer.add_scalar(f"{stage}/{key}", entry[key], entry["epoch"])
        self.writer.flush()

    def log_final(self, report: dict) -> None:
        for phase, value in _accuracies(report):
            self.writer.add_scalar(f"accuracy/{phase}", value, 0)
        self.writer.add_scalar("sparsity/achieved", report["sparsity"]["achieved"], 0)

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, history: list, tracking_uri: Optional[str] = None,
                 experiment: str = "prune-cli"):
        import mlflow
        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri or (Path(run_dir) / "mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment or "prune-cli")
        self.run = mlflow.start_run(run_name=Path(run_dir).name)
        self.step = 0

    def log_epoch(self, entry: dict) -> None:
        self.step += 1
        metrics = {f"{entry['stage']}.{k}": entry[k] for k in ("loss", "train_accuracy", "lr", "val_accuracy")
                   if k in entry}
        self.mlflow.log_metrics(metrics, step=self.step)

    def log_final(self, report: dict) -> None:
        metrics = {f"accuracy.{phase}": value for phase, value in _accuracies(report)}
        metrics["sparsity.achieved"] = report["sparsity"]["achieved"]
        self.mlflow.log_metrics(metrics)

    def close(self) -> None:
        self.mlflow.end_run()


LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


class Loggers:
    """All the configured loggers as one."""

    def __init__(self, run_dir: Path, config: Optional[Mapping], history: list = ()):
        check(config)
        self.loggers = [LOGGERS[name](run_dir, list(history), **dict(options))
                        for name, options in (config or {}).items()]

    def log_epoch(self, entry: dict) -> None:
        for logger in self.loggers:
            logger.log_epoch(entry)

    def finish(self, report: dict) -> None:
        for logger in self.loggers:
            logger.log_final(report)
            logger.close()
        self.loggers = []

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def _accuracies(report: dict) -> list[tuple[str, float]]:
    """The report's accuracy numbers by phase (not ``pruned_at``, which says when one was measured)."""
    return [(phase, value) for phase, value in (report.get("accuracy") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]
