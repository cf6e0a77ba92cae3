"""Post-training int8 quantization of the final (pruned, fine-tuned) model, with PyTorch's own stack.

- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (int8 weights, activations
  quantized on the fly); Conv layers stay float.
- ``int8_static``: FX graph mode (``prepare_fx`` / ``convert_fx``) with the backend's default qconfig: Conv and
  Linear layers with int8 weights and activations, calibrated on ``quantize.calibration_batches`` training
  batches (never test data).

Why ``torch.ao`` rather than torchao: torchao's int8 configs produce tensor subclasses that
``torch.load(weights_only=True)`` refuses unless every subclass is allow-listed, and its CPU path runs
without fused int8 kernels unless compiled; ``torch.ao``'s eager and FX modes use the fbgemm/x86 int8
kernels, and their state dicts are plain quantized tensors, which ``weights_only`` loading accepts. torch
2.14 marks ``torch.ao.quantization`` deprecated in favour of torchao; those warnings are silenced here.

Quantized kernels run on the CPU: on a CUDA run the quantized model is evaluated and timed on the CPU, and
the report says so. Zeros survive quantization exactly (symmetric int8 maps 0 to 0); they are counted in the
int8 weights.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn

from prune_cli.errors import UsageError

METHODS = ("none", "int8_dynamic", "int8_static")
BACKENDS = ("auto", "x86", "fbgemm", "qnnpack", "onednn")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, on every call
        yield


def backend_for(wanted: str) -> str:
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if wanted == "auto":
        for name in ("x86", "fbgemm", "qnnpack", "onednn"):
            if name in engines:
                return name
        raise UsageError("quantize: this PyTorch build has no quantized engine")
    if wanted not in engines:
        raise UsageError(f"quantize.backend={wanted}: not available in this PyTorch build; it has "
                         f"{', '.join(engines)}")
    return wanted


@dataclass
class Quantized:
    model: nn.Module                   # on the CPU, eval mode
    method: str
    backend: str
    layers: list[str] = field(default_factory=list)      # weights held in int8
    skipped: list[str] = field(default_factory=list)     # prunable weights left float, with why


def structure(model: nn.Module, method: str, backend: str, example_shape: Iterable[int]) -> nn.Module:
    """The quantized module for ``model`` (a CPU copy) before calibration: what a checkpoint's state dict
    is loaded into."""
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    with _quiet():
        if method == "int8_dynamic":
            return torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx
        return prepare_fx(float_model, get_default_qconfig_mapping(backend),
                          example_inputs=(torch.zeros(1, *example_shape),))


def convert(prepared: nn.Module, method: str) -> nn.Module:
    if method == "int8_dynamic":
        return prepared
    from torch.ao.quantization.quantize_fx import convert_fx
    with _quiet():
        return convert_fx(prepared).eval()


def quantize(model: nn.Module, method: str, backend: str, example_shape, calibration=(),
             prunable: Iterable[str] = ()) -> Quantized:
    """Quantize a copy of ``model``; ``calibration`` yields input batches (static only). Raises UsageError
    with one line when the method cannot handle the model (e.g. FX cannot trace it)."""
    try:
        prepared = structure(model, method, backend, example_shape)
    except Exception as err:  # FX tracing of a model with data-dependent control flow, say
        raise UsageError(f"quantize={method}: the model cannot be prepared ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160]})") from None
    if method == "int8_static":
        with torch.no_grad(), _quiet():
            for x in calibration:
                prepared(x.cpu())
    quantized = convert(prepared, method)
    layers = [f"{name}.weight" for name, _ in int8_weights(quantized)]
    skipped = [f"{name} (kept float: {'dynamic int8 quantizes Linear layers only' if method == 'int8_dynamic' else 'not quantized by the backend config'})"
               for name in prunable if name not in layers]
    return Quantized(quantized, method, backend, layers, skipped)


def int8_weights(model: nn.Module):
    """(module name, dequantized weight) of every module that holds an int8 weight."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, (torch.Tensor, nn.Parameter)):
            try:
                weight = weight()
            except (RuntimeError, TypeError):
                continue
        if isinstance(weight, torch.Tensor) and weight.is_quantized:
            with _quiet():
                yield name, weight.dequantize()


def zero_counts(model: nn.Module, names: Optional[Iterable[str]] = None) -> tuple[int, int]:
    """(zeros, entries) over the int8 weights (of the named weights only, when given)."""
    wanted = None if names is None else set(names)
    zeros = total = 0
    for name, weight in int8_weights(model):
        if wanted is not None and f"{name}.weight" not in wanted:
            continue
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros, total


def nonzero_params(model: nn.Module) -> int:
    """Non-zero entries over every weight and bias the quantized model holds (int8 or float)."""
    count = 0
    for _, weight in int8_weights(model):
        count += int((weight != 0).sum())
    for module in model.modules():
        for param in module.parameters(recurse=False):
            count += int((param != 0).sum())
        bias = getattr(module, "bias", None)
        if callable(bias) and not isinstance(bias, torch.Tensor):
            try:
                bias = bias()
            except (RuntimeError, TypeError):
                bias = None
            if isinstance(bias, torch.Tensor):
                count += int((bias != 0).sum())
    return count
