"""Optimizer steps and FLOP counting without importing ``torch._dynamo`` (about 1 s: a third of a short run).

torch decorates ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` and every
dispatch mode's ``__torch_dispatch__`` (``FlopCounterMode`` counts our multiply-adds) with
``torch._disable_dynamo``: on its first call the decorator imports ``torch._dynamo`` only to mark the function
"do not compile", and caches the marked function on the original as ``__dynamo_disable``. ``Optimizer.step``
imports it to place graph breaks. Outside ``torch.compile``, neither the mark nor the graph breaks do anything.

``skip_dynamo_marks`` fills that cache with each function itself, so the decorators call straight through,
and ``step`` runs an optimizer's own update (``Optimizer.step`` without its wrappers) in the grad mode the
wrapper would set. ``step`` does so only while ``torch._dynamo`` is not loaded. The filled cache stays for the
rest of the process: were something to compile later, those functions would be traced rather than skipped.
So only prune-run's own process, which never compiles, calls ``skip_dynamo_marks`` (never the library API:
a process that compiles its own training needs the marks).
"""
from __future__ import annotations

import inspect
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DYNAMO = "torch._dynamo"


def _loaded() -> bool:
    return DYNAMO in sys.modules


def skip_dynamo_marks() -> list[str]:
    """Make torch's do-not-compile decorators on the optimizer and the FLOP counter call straight through.
    Returns the functions it changed (none once torch._dynamo is loaded)."""
    if _loaded():
        return []
    from torch.utils import flop_counter
    changed = []
    targets = [(torch.optim.Optimizer, name) for name in ("add_param_group", "zero_grad", "state_dict",
                                                          "load_state_dict")]
    # FlopCounterMode enters an inner TorchDispatchMode subclass, whose dispatch torch decorates.
    modes = [(mode, "__torch_dispatch__") for mode in vars(flop_counter).values()
             if isinstance(mode, type) and issubclass(mode, TorchDispatchMode) and "__torch_dispatch__" in vars(mode)]
    for owner, name in [*targets, *modes]:
        original = getattr(inspect.getattr_static(owner, name), "__wrapped__", None)
        if original is None or getattr(original, "__dynamo_disable", None) is not None:
            continue  # not torch's lazy decorator in this release, or already resolved
        original.__dynamo_disable = original
        changed.append(f"{owner.__name__}.{name}")
    return changed


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    from torch.optim import optimizer as module
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or module._global_optimizer_pre_hooks or module._global_optimizer_post_hooks)


def step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``: the same update, without importing torch._dynamo while it is not loaded.

    With step hooks registered, ``step`` replaced on the instance (an LR scheduler does that) or dynamo loaded,
    this is ``optimizer.step()`` itself. The unwrapped update skips only the profiler's record_function label."""
    if _loaded() or _has_step_hooks(optimizer) or "step" in vars(optimizer):
        optimizer.step()
        return
    update = inspect.unwrap(type(optimizer).step)
    with torch.set_grad_enabled(bool(optimizer.defaults.get("differentiable", False))):
        update(optimizer)
