"""How float32 arithmetic runs, set for a while and put back: the matmul precision (``high`` lets a GPU use
TF32, which keeps 10 mantissa bits) and cuDNN's TF32 convolutions (a GPU's default)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def float32_arithmetic(matmul: Optional[str] = None, tf32_convolutions: Optional[bool] = None) -> Iterator[None]:
    """Within the block, ``torch.set_float32_matmul_precision(matmul)`` and ``cudnn.allow_tf32`` (each left as
    it is when None); afterwards, after an error too, both as they were."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        if tf32_convolutions is not None:
            torch.backends.cudnn.allow_tf32 = tf32_convolutions
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[0])


def ieee_fp32():
    """IEEE float32 throughout (no TF32): for checking that two models compute the same function, where TF32's
    ~1e-3 relative error would hide or fake a difference."""
    return float32_arithmetic("highest", tf32_convolutions=False)
