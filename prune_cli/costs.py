"""What a pruned model costs: multiply-adds, wall-clock latency, bytes on disk, parameter counts.

Every number here is measured or counted, never estimated from a formula that could drift from the code:
MACs come from ``torch.utils.flop_counter``, sizes from actually serialising with ``torch.save``, latency from
timed forward passes. Non-zero counts always look at the weights themselves (times the mask, when one is
given), so a weight that is zero for any reason counts as zero.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import time
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

# Layers whose multiply-adds shrink with their weights' sparsity (ShrinkBench's "theoretical" speed-up).
# _ConvNd covers Conv1d/2d/3d and the transposed convolutions.
WEIGHTED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


# --------------------------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Measure in eval mode (BatchNorm on a batch of one would fail in train mode, and dropout would
    change the work), then give the caller back the model in the mode it came in."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int, device) -> torch.Tensor:
    """Pixels in [0, 1], in the model's floating dtype (float32 for a model without floating parameters)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.rand(batch_size, *input_shape, device=device, dtype=dtype)


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _nonzero(weight: torch.Tensor, mask: torch.Tensor | None = None) -> int:
    """Non-zeros of the weight as the model would compute with it (masked entries count as zero)."""
    if mask is not None:
        return int(((weight != 0) & (mask.to(weight.device) != 0)).sum())
    return int(torch.count_nonzero(weight))


# ---------------------------------------------------------------------------------------------------- FLOPs

@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int],
                masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Multiply-adds (MACs) of one forward pass of a single example, dense and with zeros discounted.

    ``input_shape`` is one example's shape, e.g. ``(1, 28, 28)``. Returns
    ``{"dense", "nonzero", "theoretical_speedup", "layers": [{"name", "dense", "nonzero"}]}``.
    ``nonzero`` scales each Linear/Conv layer's MACs by the fraction of its weights that are non-zero
    (ShrinkBench's theoretical count); every other op (e.g. a bare matmul) is kept at its dense cost.
    ``theoretical_speedup`` is dense / nonzero, or None when nothing is left to compute.
    """
    from torch.utils.flop_counter import FlopCounterMode

    masks = masks or {}
    counter = FlopCounterMode(display=False)
    # Per-layer FLOPs are read as the change of the running total across each layer's forward, which needs
    # no knowledge of how FlopCounterMode names modules, and counts a layer called twice twice.
    layer_flops: dict[str, int] = {}
    started: dict[str, int] = {}
    handles = []
    layers = {name: module for name, module in model.named_modules() if isinstance(module, WEIGHTED_LAYERS)}
    for name, module in layers.items():
        def pre(_module, _args, name=name):
            started[name] = counter.get_total_flops()

        def post(_module, _args, _output, name=name):
            layer_flops[name] = layer_flops.get(name, 0) + counter.get_total_flops() - started.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with _eval_mode(model), counter:
            model(_example_input(model, input_shape, 1, _model_device(model)))
    finally:
        for handle in handles:
            handle.remove()

    # FlopCounterMode counts a multiply-add as 2 FLOPs (matmul, conv); we report MACs, the unit pruning
    # papers use, so halve. Bias additions are not counted by it, consistently for dense and nonzero.
    dense = counter.get_total_flops() // 2
    per_layer = []
    saved = 0
    for name, module in layers.items():
        macs = layer_flops.get(name, 0) // 2
        weight = module.weight
        # A layer's MACs are (positions x weight elements), so this division is exact for Linear and Conv.
        kept = macs * _nonzero(weight, masks.get(f"{name}.weight")) // weight.numel()
        saved += macs - kept
        per_layer.append({"name": name, "dense": macs, "nonzero": kept})
    nonzero = dense - saved
    return {
        "dense": dense,
        "nonzero": nonzero,
        # None rather than inf: it goes into report.json, and JSON has no infinity.
        "theoretical_speedup": dense / nonzero if nonzero else None,
        "layers": per_layer,
    }


# -------------------------------------------------------------------------------------------------- latency

@torch.inference_mode()
def measure_latency(model: nn.Module, input_shape: Sequence[int], device,
                    batch_sizes: Sequence[int] = (1, 256), warmup: int = 5, repeats: int = 30,
                    max_time_s: float = 0.5) -> dict[str, float]:
    """Median milliseconds per forward pass, for each batch size: ``{"batch_1_ms": .., "batch_256_ms": ..}``.

    The model must already be on ``device``. ``input_shape`` is one example's shape. Per batch size,
    warm-up and timing each stop early once ``max_time_s`` is spent (after at least one warm-up pass and
    three timed passes), so a large model costs seconds, not minutes, and a small one still gets
    ``repeats`` samples.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync():
        # CUDA launches are asynchronous: without this we would time the launch, not the work.
        if cuda:
            torch.cuda.synchronize(device)

    results = {}
    with _eval_mode(model):
        for batch_size in batch_sizes:
            x = _example_input(model, input_shape, batch_size, device)
            deadline = time.perf_counter() + max_time_s
            for _ in range(max(1, warmup)):
                model(x)
                if time.perf_counter() > deadline:
                    break
            sync()
            times = []
            deadline = time.perf_counter() + max_time_s
            for _ in range(max(3, repeats)):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
                if len(times) >= 3 and time.perf_counter() > deadline:
                    break
            results[f"batch_{batch_size}_ms"] = statistics.median(times) * 1e3
    return results


@torch.inference_mode()
def measure_latency_side_by_side(models: Mapping[str, nn.Module], input_shape: Sequence[int], device,
                                 batch_sizes: Sequence[int] = (1, 256), warmup: int = 3, repeats: int = 30,
                                 max_time_s: float = 0.5) -> dict[str, dict[str, float]]:
    """Median ms per forward pass of several models, timed in alternation (A, B, C, A, B, C, ...).

    On a shared machine the load changes from second to second; alternating puts every model under the same
    conditions, so their ratios (the speed-ups in the report) are fair even when the absolute times drift.
    ``max_time_s`` bounds each batch size's timing for all models together (at least 3 passes each).
    """
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results: dict[str, dict[str, float]] = {name: {} for name in models}
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(_eval_mode(model))
        for batch_size in batch_sizes:
            inputs = {name: _example_input(m, input_shape, batch_size, device) for name, m in models.items()}
            for name, model in models.items():
                for _ in range(max(1, warmup)):
                    model(inputs[name])
            sync()
            times: dict[str, list[float]] = {name: [] for name in models}
            deadline = time.perf_counter() + max_time_s
            for round_index in range(max(3, repeats)):
                for name, model in models.items():
                    sync()
                    start = time.perf_counter()
                    model(inputs[name])
                    sync()
                    times[name].append(time.perf_counter() - start)
                if round_index >= 2 and time.perf_counter() > deadline:
                    break
            for name in models:
                results[name][f"batch_{batch_size}_ms"] = statistics.median(times[name]) * 1e3
    return results


# ---------------------------------------------------------------------------------------------------- sizes

def _serialized_size(obj) -> int:
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
        "dense": _serialized_size(state_dict),
        "sparse": _serialized_size(encode_sparse(state_dict, masks)),
        "shrunk": None if shrunk_state_dict is None else _serialized_size(shrunk_state_dict),
    }


# ----------------------------------------------------------------------------------------------- parameters

def param_counts(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
    """``{"total", "nonzero"}`` over all parameters; non-zeros counted from the weights (times the mask)."""
    masks = masks or {}
    total = nonzero = 0
    for name, param in model.named_parameters():
        total += param.numel()
        nonzero += _nonzero(param.detach(), masks.get(name))
    return {"total": total, "nonzero": nonzero}
