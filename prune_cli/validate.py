"""Input checks: every bad value becomes one line naming the key, the value and what is allowed."""
from __future__ import annotations

import numbers

from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import UsageError
from prune_cli.training.settings import LR_DECAYS, OPTIMIZERS


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
