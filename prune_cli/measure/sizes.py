"""Bytes on disk, measured by serialising with ``torch.save``, and the compact sparse encoding of masked weights."""
from __future__ import annotations

import io
import math
import os
from typing import Mapping

import torch


def serialized_size(obj) -> int:
    """Bytes ``torch.save`` writes for ``obj``: measured, not estimated."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a file on disk."""
    return os.path.getsize(path)


def _pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Flat bool tensor -> uint8, eight positions per byte (least significant bit first)."""
    padded = torch.zeros(math.ceil(keep.numel() / 8) * 8, dtype=torch.uint8, device=keep.device)
    padded[: keep.numel()] = keep.to(torch.uint8)
    weights = 2 ** torch.arange(8, dtype=torch.uint8, device=keep.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return ((bits.unsqueeze(1) >> shifts) & 1).flatten()[:numel].bool()


def _encode_tensor(weight: torch.Tensor, mask: torch.Tensor):
    """The smallest of three encodings of a masked weight, all plain tensors and containers so that
    ``torch.load(weights_only=True)`` reads them:

    - dense: the tensor itself (wins below ~3% sparsity);
    - bitmap: one bit per position plus the non-zero values (wins between ~3% and ~97% sparsity);
    - indices: int32 flat positions plus the values (wins above ~97%, where 32 bits per non-zero beat
      one bit per position). int32 halves torch's own int64 sparse indices; CSR would add row pointers.
    """
    weight, mask = weight.detach(), mask.to(weight.device)
    keep = ((weight != 0) & (mask != 0)).flatten()
    values = weight.flatten()[keep].clone()
    numel, nnz, value_bytes = weight.numel(), values.numel(), weight.element_size()
    index_dtype = torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64
    costs = {
        "dense": numel * value_bytes,
        "bitmap": math.ceil(numel / 8) + nnz * value_bytes,
        "indices": nnz * (value_bytes + torch.tensor([], dtype=index_dtype).element_size()),
    }
    choice = min(costs, key=costs.get)
    shape = list(weight.shape)
    if choice == "dense":
        return torch.where(mask != 0, weight, torch.zeros_like(weight)).clone()
    if choice == "bitmap":
        return {"format": "bitmap", "shape": shape, "bits": _pack_bits(keep), "values": values}
    return {"format": "indices", "shape": shape, "values": values,
            "indices": keep.nonzero().flatten().to(index_dtype)}


def _decode_tensor(encoded) -> torch.Tensor:
    if isinstance(encoded, torch.Tensor):
        return encoded
    values = encoded["values"]
    numel = math.prod(encoded["shape"])
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    if encoded["format"] == "bitmap":
        out[_unpack_bits(encoded["bits"], numel)] = values
    elif encoded["format"] == "indices":
        out[encoded["indices"].long()] = values
    else:
        raise ValueError(f"unknown sparse format {encoded['format']!r}")
    return out.view(encoded["shape"])


def encode_sparse(state_dict: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor]) -> dict:
    """State dict with each masked tensor in its smallest encoding; other entries unchanged."""
    return {name: _encode_tensor(tensor, masks[name]) if name in masks else tensor
            for name, tensor in state_dict.items()}


def decode_sparse(encoded: Mapping) -> dict[str, torch.Tensor]:
    """Inverse of ``encode_sparse``: a plain state dict that ``load_state_dict`` accepts."""
    return {name: _decode_tensor(value) for name, value in encoded.items()}


def checkpoint_sizes(state_dict: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                     shrunk_state_dict: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Bytes ``torch.save`` writes for: the dense state dict, its sparse encoding (``encode_sparse``), and
    the shrunk state dict when given (else None). ``{"dense", "sparse", "shrunk"}``.

    Each is serialised as given: torch.save writes a view's whole underlying storage, so a shrunk state
    dict built from slices should be made of copies to show its real size.
    """
    return {
        "dense": serialized_size(state_dict),
        "sparse": serialized_size(encode_sparse(state_dict, masks)),
        "shrunk": None if shrunk_state_dict is None else serialized_size(shrunk_state_dict),
    }
