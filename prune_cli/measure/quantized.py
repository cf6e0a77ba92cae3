"""Post-training int8 quantization of the final (pruned, fine-tuned) model, with torchao.

- ``int8_dynamic``: ``Int8DynamicActivationInt8WeightConfig`` on the Linear layers (int8 weights per output row,
  activations quantized on the fly); Conv layers stay float.
- ``int8_weight_only``: ``Int8WeightOnlyConfig`` on the Linear layers (int8 weights, float activations).

torch deprecates its own older quantization package in favour of torchao. torchao's int8 tensors cover
Linear layers only: a convolution on them has no kernel (``aten.convolution`` is unimplemented for
``Int8Tensor``). Its replacement for static, calibrated int8 of conv nets is the pt2e flow, which exports a
graph specialised to one input shape and runs int8 only once inductor compiles it; so ``int8_static`` (the
old FX-mode path over Conv and Linear) is refused with one line until that flow can be saved and reloaded as
data (docs/architecture.md, "Quantization").

The quantized model lives on the CPU, where it is evaluated and timed beside the float models; on a CUDA run
the report says so. Zeros survive quantization exactly (symmetric int8 maps 0 to 0) and are counted in the
int8 weights. Its state dict holds torchao's tensor subclasses, which ``torch.load(weights_only=True)``
accepts once torchao is imported (it registers them as safe).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn

from prune_cli.errors import UsageError

METHODS = ("none", "int8_dynamic", "int8_weight_only")
REFUSED = {"int8_static": "torchao's int8 tensors have no convolution kernel, and its calibrated pt2e flow "
                          "exports a fixed-shape graph that runs int8 only when compiled; use "
                          "quantize=int8_dynamic or quantize=int8_weight_only (Linear layers)"}


def import_torchao():
    """torchao, imported without the notice torch logs on its import (torch 2.14 tells torchao, not the user,
    that an Enum needs no registering); the logger's level is put back afterwards."""
    import logging
    noisy = logging.getLogger("torch.utils._pytree")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.quantization  # noqa: F401
    finally:
        noisy.setLevel(level)
    return torchao


def library() -> str:
    """The library and version that quantized (``quantized.library`` in the report)."""
    return f"torchao {import_torchao().__version__}"


def _config(method: str):
    import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    if method == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if method == "int8_weight_only":
        return Int8WeightOnlyConfig()
    raise UsageError(f"quantize={method}: {REFUSED.get(method, 'unknown method')}")


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear)


@dataclass
class Quantized:
    model: nn.Module                   # on the CPU, eval mode
    method: str
    library: str
    layers: list[str] = field(default_factory=list)      # weights held in int8
    skipped: list[str] = field(default_factory=list)     # prunable weights left float, with why


def structure(model: nn.Module, method: str) -> nn.Module:
    """A quantized CPU copy of ``model``: the result itself, and what a checkpoint's state dict loads into."""
    import_torchao()
    from torchao.quantization import quantize_
    quantized = copy.deepcopy(model).cpu().eval()
    quantize_(quantized, _config(method), filter_fn=_is_linear)
    return quantized


def quantize(model: nn.Module, method: str, prunable: Iterable[str] = ()) -> Quantized:
    """Quantize a copy of ``model``; a model torchao cannot handle is one line (UsageError)."""
    try:
        quantized = structure(model, method)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever torchao raises for a layer it cannot take
        raise UsageError(f"quantize={method}: the model cannot be quantized ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160]})") from None
    layers = [f"{name}.weight" for name, _ in int8_weights(quantized)]
    skipped = [f"{name} (kept float: torchao's int8 covers Linear layers only)"
               for name in prunable if name not in layers]
    return Quantized(quantized, method, library(), layers, skipped)


def int8_weights(model: nn.Module):
    """(module name, dequantized weight) of every module that holds an int8 weight."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        # torchao's quantized tensors are Tensor subclasses that keep their int8 data and scales;
        # ``dequantize()`` gives the float values the int8 ones stand for.
        if isinstance(weight, torch.Tensor) and type(weight) not in (torch.Tensor, nn.Parameter) \
                and callable(getattr(weight, "dequantize", None)):
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
    int8 = {name for name, _ in int8_weights(model)}
    for _, weight in int8_weights(model):
        count += int((weight != 0).sum())
    for name, module in model.named_modules():
        for key, param in module.named_parameters(recurse=False):
            if key == "weight" and name in int8:
                continue
            count += int((param != 0).sum())
    return count
