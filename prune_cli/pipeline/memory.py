"""Whether a run's data and model fit the machine, estimated from the config before anything is allocated.

The schema's ranges admit sizes no machine has (a 4096x4096 synthetic image, ten million of them, a hidden
layer of a million units); allocating them first would end in the allocator's traceback after minutes of
work, or in the kernel killing the process. The estimates are deliberately simple and on the low side of what
a run really uses, so that they never refuse a run that would fit: a refusal means the run cannot fit.
"""
from __future__ import annotations

import os
from typing import Optional

from prune_cli.errors import UsageError

FLOAT32 = 4
# Training holds each weight about this many times over: the weight, its gradient, the optimizer's state
# (momentum, or Adam's two moments), the mask and a kept copy (the initial weights, the rewind point).
WEIGHT_COPIES = 5


def available_bytes(device=None) -> Optional[int]:
    """Memory a run can still take: the GPU's free memory for a CUDA device, else the host's available memory
    (``MemAvailable`` on Linux, free physical pages elsewhere); None when the system does not say."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch
        index = _index(device)
        free, total = torch.cuda.mem_get_info(index)
        # Within this process's bound (gpu_memory_fraction), less what its allocator already holds.
        share = torch.cuda.get_per_process_memory_fraction(index) * total - torch.cuda.memory_reserved(index)
        return int(max(0, min(free, share)))
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def bound_gpu_memory(wanted, device) -> Optional[float]:
    """The share of the GPU's memory this run may hold (``gpu_memory_fraction``), set with torch's public
    per-process bound; None without one. Jobs of a joblib sweep share one GPU: by default each holds at most
    1/n_jobs of it, so a job that outgrows its share runs out of memory itself instead of starving the others.
    The bound in place before the first run that set one is kept in ``GPU_MEMORY_BEFORE``: a later run of the
    same process without a bound (a sweep's next job) gets it back, and so does the library API's caller."""
    if device.type != "cuda":
        return None
    if wanted == "auto":
        jobs = _joblib_jobs()
        wanted = 1.0 / jobs if jobs > 1 else None
    import torch
    index = _index(device)
    if wanted is None:
        if index in GPU_MEMORY_BEFORE:
            torch.cuda.set_per_process_memory_fraction(GPU_MEMORY_BEFORE[index], index)
        return None
    GPU_MEMORY_BEFORE.setdefault(index, torch.cuda.get_per_process_memory_fraction(index))
    torch.cuda.set_per_process_memory_fraction(float(wanted), index)
    return float(wanted)


GPU_MEMORY_BEFORE: dict = {}  # device index -> the bound before a run set its own


def _index(device) -> int:
    """A CUDA device's index (``cuda`` alone is the current one): torch's per-process bound wants one."""
    import torch
    return device.index if device.index is not None else torch.cuda.current_device()


def _joblib_jobs() -> int:
    """How many jobs of this process's sweep run at once under Hydra's joblib launcher, when its ``n_jobs``
    says (1 otherwise). joblib's default, -1 (a job per CPU core), says nothing about how many jobs the sweep
    has: 1/cores of the GPU would starve a sweep of two, so it sets no bound."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    return max(1, int(launcher.get("n_jobs", 1)))


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def check_data_fits(dataset_cfg) -> None:
    """Refuse a dataset whose in-memory size (its registry entry's estimate) exceeds the host's memory."""
    from prune_cli.data import DATASETS
    registered = DATASETS.get(str(dataset_cfg.name))
    estimate = registered.nbytes(dataset_cfg) if registered is not None and registered.nbytes else None
    if estimate is None:
        return
    available = available_bytes()
    if available is not None and estimate > available:
        sizes = ", ".join(f"dataset.{key}={dataset_cfg.get(key)}" for key in registered.size_keys)
        raise UsageError(f"{sizes}: the set needs about {_gib(estimate)} of memory, more than the "
                         f"{_gib(available)} this machine has available; make it smaller")


def check_model_fits(model_cfg: dict, info, device) -> int:
    """Refuse a model whose weights, held ``WEIGHT_COPIES`` times while training, exceed the memory of
    ``device``. The model is built on the meta device (shapes, no storage), so the check allocates nothing.
    Returns its parameter count."""
    import torch

    from prune_cli.models.spec import build, make_spec
    try:
        with torch.device("meta"):
            model = build(make_spec({k: v for k, v in model_cfg.items() if k != "pretrained"}, info))
    except Exception:  # noqa: BLE001 - a model that cannot be built (or not on meta) is judged by build_for
        return 0
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    estimate = params * FLOAT32 * WEIGHT_COPIES
    available = available_bytes(device)
    if available is not None and estimate > available:
        name = model_cfg.get("name", model_cfg.get("_target_"))
        where = "the GPU has free" if getattr(device, "type", "") == "cuda" else "this machine has available"
        raise UsageError(f"model={name}: {params:,} parameters need about {_gib(estimate)} to train, more than "
                         f"the {_gib(available)} {where}; choose a smaller model or inputs")
    return params
