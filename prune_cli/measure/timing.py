"""Stage wall times, CUDA-synchronised so that queued kernels are counted."""
from __future__ import annotations

import time

import torch


def synchronize(device) -> None:
    """CUDA launches are asynchronous: without a sync a timer measures the launch, not the work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """``with Timer(device) as t: ...`` then ``t.seconds``."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        return False
