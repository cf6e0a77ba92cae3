"""One experiment across processes: ``torchrun --nproc_per_node=N -m prune_cli.app.cli ...``.

torchrun starts N copies of the command and tells each its rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
They run the same experiment together:

- training: DistributedDataParallel, each rank on its slice of every global batch of the single-process
  order (``shard``), its loss weighted so that the averaged gradient is the whole batch's mean
  (``train.batch_size`` stays the global batch);
- scoring and pruning once, on rank 0 (the others wait for it), from the same calibration batches as one
  process; then its masks and weights on every rank (``agree``), checked identical;
- evaluation sharded and summed (``all_sum``): the test split counted exactly once;
- one run directory, one resume state, one report, one checkpoint, one set of logs: rank 0 writes
  (``is_main``); where it works alone the others wait for its outcome (``on_main``), and leave with its exit
  code when it failed, so no rank waits for a collective that never comes.

The backend is ``nccl`` for CUDA tensors and ``gloo`` for CPU ones (``cpu:gloo,cuda:nccl`` where there is a
GPU). Outside torchrun every function here is a no-op for a single process.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # torch is imported where it is used: the command line checks its input before loading it
    import torch


def launched() -> bool:
    """Whether this process is one of several that torchrun started for one experiment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether the process group is up (``start`` was called in a torchrun worker)."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def start() -> None:
    """Join the process group (once per process); on a GPU machine each rank takes the GPU of its local rank."""
    import datetime

    import torch
    import torch.distributed as dist
    if not launched() or active():
        return
    # The ranks' collectives in training come within seconds of each other: half an hour bounds the wait on a
    # peer that vanished without torchrun noticing (a SLURM task), after which the collective fails.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(minutes=30))
    # Rank 0's own work can take hours (waiting on the dense cache's lock while another job trains that model;
    # the final measurements of a large one): the others wait for it in a group of their own.
    WAITING[0] = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=24))


def join_job_tasks() -> bool:
    """A job that Hydra's submitit launcher started as several tasks (``hydra.launcher.tasks_per_node`` or
    ``nodes`` above 1): its tasks are the processes of one experiment. submitit's own description of the job
    (``TorchDistributedEnvironment``) gives each its rank and the first host's address; returns whether this
    process joined such a group."""
    if launched() or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    import submitit
    if submitit.JobEnvironment().num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    start()
    if not is_main():  # rank 0 writes the job's log; Hydra opened it in every task
        import logging
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, logging.FileHandler) or type(handler).__name__ == "LogFile":
                logging.getLogger().removeHandler(handler)
                handler.close()
    return True


def stop() -> None:
    if not launched():  # a single process never loaded torch.distributed for this (--help stays torch-free)
        return
    import datetime

    import torch.distributed as dist
    if active():
        if COMPLETED[0]:
            # Leave together: a rank that tears its connections down while rank 0 still writes can abort the
            # other's communication threads. Only after a completed run: on an error path the peers may be in
            # other collectives, or gone.
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            except Exception:  # noqa: BLE001 - a lost peer, or a backend without a monitored barrier
                pass
        dist.destroy_process_group()


def backend(device: "torch.device") -> str:
    """The backend this device's tensors go through."""
    return "nccl" if device.type == "cuda" else "gloo"


COMPLETED = [False]  # the experiment finished on every rank (set after its last barrier)
WAITING: list = [None]  # the process group in which the others wait on rank 0's own work (``on_main``)
AGREED = [0]    # prunes after which the ranks' masks were compared, in this process
DIFFERED = [0]  # of those, the prunes where some rank held other masks than rank 0 after taking them (a bug)


def describe(device: "torch.device") -> Optional[dict]:
    """The report's ``distributed``: world size, backend, and how many prunes' masks were checked identical on
    every rank (``masks_checked``); None for a single process."""
    if not active():
        return None
    return {"world_size": world_size(), "backend": backend(device), "masks_checked": AGREED[0],
            "masks_differed": DIFFERED[0]}


def check(cfg, device: "torch.device") -> None:
    """What a run across processes cannot do, refused with one line by the guard before anything is written
    (and by the run itself): a global batch with fewer than two examples per process, one GPU named for every
    rank, more processes on a node than it has GPUs (two ranks would share one)."""
    if not active():
        return
    from prune_cli.errors import UsageError
    n = world_size()
    for key in ("train", "finetune"):
        size = int(cfg[key].batch_size)
        if size < 2 * n:
            raise UsageError(f"{key}.batch_size={size}: across {n} processes the global batch needs at least "
                             f"{2 * n} examples (two per process)")
    if device.type != "cuda":
        return
    if device.index is not None:
        raise UsageError(f"device={device}: across {n} processes each takes its own GPU; use device=cuda (or auto)")
    import torch
    count = torch.cuda.device_count()
    here = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")) + 1)
    # torchrun's processes on a node all see its GPUs; a SLURM task that sees a single GPU was given its own.
    shared = "TORCHELASTIC_RUN_ID" in os.environ or count > 1
    if shared and here > count:
        raise UsageError(f"device={device}: {here} processes on this node and {count} GPU(s); each process takes "
                         f"its own: start at most {count} per node (torchrun --nproc_per_node={count})")


def device_for(device: "torch.device") -> "torch.device":
    """The device a rank trains on: on CUDA its own GPU, the local rank's among those it sees (one, when the
    scheduler gives each task its own; ``check`` refuses fewer GPUs than processes); made the current device,
    as NCCL wants."""
    import torch
    if not active() or device.type != "cuda":
        return device
    only = torch.cuda.device_count() == 1
    mine = torch.device("cuda", 0 if only else int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(mine)
    return mine


class MainFailed(Exception):
    """On a rank other than 0: rank 0's own part of the work failed (rank 0 reports why). ``code`` is the exit
    code rank 0 leaves with, which this rank takes too."""

    def __init__(self, code: int, why: str):
        super().__init__(f"rank 0 failed: {why}")
        self.code = code


def on_main(work):
    """``work()`` on rank 0 alone while the others wait for its outcome, however long it takes; returns its
    result on rank 0 and None on the others. If it fails, rank 0 raises its error and the others
    ``MainFailed``: every rank leaves, none waits at a collective rank 0 will never reach."""
    import torch.distributed as dist
    if not active():
        return work()
    failure, result = None, None
    if is_main():
        try:
            result = work()
        except BaseException as err:  # noqa: BLE001 - told to the others, then raised again
            failure = err
    box = [None if failure is None else (_exit_code(failure), f"{type(failure).__name__}: {failure}")]
    try:
        dist.broadcast_object_list(box, src=0, group=WAITING[0])
    finally:
        if failure is not None:  # rank 0's own error, even when the others could not be told (one is gone)
            raise failure
    if box[0] is not None:
        raise MainFailed(*box[0])
    return result


def linger(seconds: float = 30.0) -> None:
    """A rank other than 0 that failed, before it exits under torchrun: the same failure (a non-finite loss
    reaches every rank through the averaged gradients) is usually rank 0's too, at the same step, or rank 0's
    own (``MainFailed``), and torchrun stops every process as soon as one exits, which could cut rank 0's
    report of it short. So this rank waits until torchrun stops it after rank 0 has left, or ``seconds`` at
    most (then its exit stops the run). The tasks of a SLURM job end on their own: no wait."""
    import time
    if "TORCHELASTIC_RUN_ID" in os.environ:
        time.sleep(seconds)


def _exit_code(err: BaseException) -> int:
    """The exit code rank 0 leaves with for ``err`` (as ``prune_cli.app.cli`` maps them)."""
    import signal

    from prune_cli.errors import UsageError
    if isinstance(err, UsageError):
        return 2
    if isinstance(err, KeyboardInterrupt):
        return 128 + int(getattr(err, "signum", signal.SIGINT))
    return 1


def broadcast(value):
    """Rank 0's ``value`` (any picklable object), on every rank."""
    import torch.distributed as dist
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(tensor: "torch.Tensor") -> "torch.Tensor":
    """The element-wise sum over ranks (in place, and returned)."""
    import torch.distributed as dist
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(x: "torch.Tensor", y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """This rank's examples of a global batch: every ``world_size``-th one from its rank, so the ranks' shards
    together are the batch."""
    if not active():
        return x, y
    return x[rank()::world_size()], y[rank()::world_size()]


def wrap(model: "torch.nn.Module") -> "torch.nn.Module":
    """The model as the training step runs it: under DistributedDataParallel (gradients averaged over ranks
    during the backward pass) when there are several processes. Parameters stay the model's own."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def agree(model: "torch.nn.Module", masks):
    """After rank 0 pruned (``masks``; None on the others): every rank takes its masks, weights and buffers,
    then the ranks compare the masks they hold (a difference, which would mean the sharing failed, is logged
    and counted in the report's ``masks_differed``). Returns the masks, on every rank."""
    import torch
    import torch.distributed as dist
    if not active():
        return masks
    from prune_cli.pruning.masks import Masks
    layout = broadcast({name: (tuple(mask.shape), str(mask.dtype).split(".")[-1]) for name, mask in masks.items()}
                       if is_main() else None)
    device = next(model.parameters()).device
    if not is_main():
        masks = Masks({name: torch.empty(shape, dtype=getattr(torch, dtype), device=device)
                       for name, (shape, dtype) in layout.items()})
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
        for name in layout:
            dist.broadcast(masks[name], src=0)
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, _digest(masks))
    if any(d != everyone[0] for d in everyone):
        import logging
        differing = [r for r, d in enumerate(everyone) if d != everyone[0]]
        logging.getLogger("prune_cli").warning("ranks %s hold other masks than rank 0 after taking its own",
                                               differing)
        DIFFERED[0] += 1
    AGREED[0] += 1
    return masks


def sync_buffers(model: "torch.nn.Module") -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank: each rank's last forward pass updated
    its own from its slice, and evaluation and saving must see one model."""
    import torch.distributed as dist
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _digest(masks) -> str:
    import torch
    h = hashlib.sha256()
    for name in sorted(masks or {}):
        h.update(name.encode())
        h.update(masks[name].detach().to("cpu", torch.uint8).numpy().tobytes())
    return h.hexdigest()
