"""Input checks: every bad value becomes one line naming the key, the value and what is allowed."""
from __future__ import annotations

import hashlib
import importlib
import json
import numbers

from omegaconf import DictConfig, OmegaConf

from .errors import UsageError
from .training import LR_DECAYS, OPTIMIZERS


def _number(cfg, key: str):
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise UsageError(f"{key}={value!r}: must be a number")
    return value


def _positive_int(cfg, key: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = "a non-negative integer" if allow_zero else "a positive integer"
        raise UsageError(f"{key}={value!r}: must be {allowed}")


def positive_int(value, key: str, minimum: int = 1) -> int:
    """For constructors of strategies and schedules: an int (not 2.5, not 'abc', not True) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{key}={value!r}: must be {allowed}")
    return value


def validate(cfg: DictConfig) -> None:
    sparsity = _number(cfg, "sparsity")
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"sparsity={sparsity!r}: must be a number in [0, 1) (the fraction of prunable "
                         f"weights that are zero at the end)")
    _positive_int(cfg, "seed", allow_zero=True)
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise UsageError(f"device={cfg.device!r}: must be one of auto, cpu, cuda")
    for stage in ("train", "finetune"):
        _positive_int(cfg, f"{stage}.epochs", allow_zero=(stage == "finetune"))
        _positive_int(cfg, f"{stage}.batch_size")
        lr = _number(cfg, f"{stage}.lr")
        if lr <= 0:
            raise UsageError(f"{stage}.lr={lr!r}: must be a positive number")
        decay = cfg[stage].get("lr_decay", "none")
        if decay not in LR_DECAYS:
            raise UsageError(f"{stage}.lr_decay={decay!r}: must be one of {', '.join(LR_DECAYS)}")
        if cfg[stage].optimizer not in OPTIMIZERS:
            raise UsageError(f"{stage}.optimizer={cfg[stage].optimizer!r}: must be one of {', '.join(OPTIMIZERS)}")
    threads = cfg.get("threads", "auto")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads={threads!r}: must be auto or a positive integer")
    val_fraction = cfg.dataset.get("val_fraction", 0.0)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Number) \
            or not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"dataset.val_fraction={val_fraction!r}: must be a number in [0, 1) (the part of the "
                         f"training split held out for validation)")
    every = _number(cfg, "checkpoint.every_s")
    if every < 0:
        raise UsageError(f"checkpoint.every_s={every!r}: must be >= 0 (0 saves every epoch)")
    _positive_int(cfg, "eval_batch_size")


def resolve_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name}: no CUDA GPU is available here; use device=cpu or device=auto")
    return torch.device(name)


def instantiate(node: DictConfig, group: str):
    """Build a strategy or schedule from ``_target_`` + parameters; constructor errors become one line."""
    params = OmegaConf.to_container(node, resolve=True)
    target = params.pop("_target_", None)
    if not target:
        raise UsageError(f"{group}: has no _target_ naming the class to use")
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(f"{group}._target_={target}: no such class") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise UsageError(f"{group}: {err}") from None
    except ValueError as err:
        message = str(err)
        if not message.startswith(f"{group}."):  # e.g. int('abc') inside a constructor: name the settings
            settings = ", ".join(f"{group}.{k}={v}" for k, v in params.items() if k != "name")
            message = f"{group}: {message} (settings: {settings})"
        raise UsageError(message) from None


def validate_plan(cfg: DictConfig, strategy, schedule) -> None:
    """Combinations that cannot reach the target, caught before any training."""
    finetune_epochs = int(cfg.finetune.epochs)
    if schedule.prunes_while_training and finetune_epochs < 1:
        raise UsageError(f"finetune.epochs={finetune_epochs}: schedule={schedule.name} prunes during "
                         f"fine-tuning, so it needs at least 1")
    rounds = getattr(schedule, "rounds", 1)
    if rounds > 1 and getattr(schedule, "fixed_epochs", None) is None and finetune_epochs < rounds:
        raise UsageError(f"schedule.rounds={rounds}: needs finetune.epochs >= rounds (got {finetune_epochs}) "
                         f"or schedule.epochs_per_round set")
    rewind_epoch = getattr(schedule, "rewind_epoch", 0)
    if rewind_epoch > int(cfg.train.epochs):
        raise UsageError(f"schedule.rewind_epoch={rewind_epoch}: must be at most train.epochs "
                         f"({cfg.train.epochs}), the epochs of dense training it rewinds to")


RESULT_NEUTRAL = ("progress", "checkpoint", "device", "cache", "threads", "measure", "dry_run")


def fingerprint(cfg: DictConfig, leave_out: tuple = ()) -> str:
    """What identifies a run for resuming: the whole config except knobs that do not change results."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in (*RESULT_NEUTRAL, *leave_out):
        plain.pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def variant(cfg: DictConfig) -> str:
    """Runs that differ only in seed and sparsity share a variant: prune-compare averages within one."""
    return fingerprint(cfg, leave_out=("seed", "sparsity"))[:8]
