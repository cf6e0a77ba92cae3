"""The inputs measurements feed a model: pixels in [0, 1] on the model's own device and dtype."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int, device) -> torch.Tensor:
    """Pixels in [0, 1], in the model's floating dtype (float32 for a model without floating parameters)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.rand(batch_size, *input_shape, device=device, dtype=dtype)


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
