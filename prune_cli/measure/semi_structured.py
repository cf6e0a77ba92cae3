"""2:4 masks on sparse tensor cores: the masked model's Linear layers as PyTorch semi-structured sparse weights
(``torch.sparse.to_sparse_semi_structured``; cuSPARSELt or CUTLASS kernels), timed against the same model in
the same precision with dense kernels.

The kernels exist only on CUDA GPUs of compute capability 8.0 or newer (Ampere on), for float16/bfloat16
weights whose shapes the kernels accept; both models are therefore timed in float16, and every layer that cannot
be converted (its shape, or a Conv) stays dense and is named. On the CPU, or with any other pattern, nothing is
converted and the report says why.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

CPU_NOTE = "no semi-structured sparse kernel on the CPU: the 2:4 masks run dense kernels"


def semi_structured_pair(model: nn.Module, masks: dict, pattern, device) -> tuple[Optional[dict], dict]:
    """({"semi_structured": sparse model, "masked_fp16": dense model}, info) or (None, info); ``info`` has
    ``used``, ``layers`` (converted), ``skipped`` {layer: why} and ``note``."""
    info: dict = {"used": False, "layers": [], "skipped": {}, "note": None}
    if pattern is None or (pattern.n, pattern.m) != (2, 4):
        info["note"] = "semi-structured kernels take 2:4 masks only"
        return None, info
    device = torch.device(device)
    if device.type != "cuda":
        info["note"] = CPU_NOTE
        return None, info
    if torch.cuda.get_device_capability(device) < (8, 0):
        info["note"] = "semi-structured sparse kernels need a GPU of compute capability 8.0 or newer"
        return None, info
    from torch.sparse import to_sparse_semi_structured
    dense = copy.deepcopy(model).half().eval()
    sparse = copy.deepcopy(dense)
    for name, module in sparse.named_modules():
        if not isinstance(module, nn.Linear) or f"{name}.weight" not in masks:
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError, TypeError) as err:  # a shape the kernels refuse: stays dense
            info["skipped"][name] = str(err).strip().splitlines()[0][:200]
        else:
            info["layers"].append(name)
    if not info["layers"]:
        info["note"] = "no Linear layer could be converted"
        return None, info
    info["used"] = True
    return {"semi_structured": sparse, "masked_fp16": dense}, info
