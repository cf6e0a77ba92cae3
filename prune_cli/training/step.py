"""One training step, in the stage's precision, eager or compiled whole.

- ``precision``: ``fp32``; ``bf16`` or ``fp16`` autocast for the forward pass and the loss, with the weights,
  gradients and optimizer state in fp32 (the "master weights"); fp16 also scales the loss
  (``torch.amp.GradScaler``) so small gradients do not flush to zero. Both run on the CPU too.
- ``compile``: ``true`` compiles the step (forward, loss, backward, optimizer update and the re-application of
  the masks) with ``torch.compile``; ``reduce-overhead`` also replays it as a CUDA graph on a GPU, which is
  what small networks need there (their steps are launch-bound). The masks are arguments of the compiled
  function, not constants inside it, so new masks of the same shapes (the next round, a gradual step) reuse
  the compiled code; a model of other shapes (a shrunk fine-tune) compiles anew. With fp16, the scaler's
  step runs outside the compiled part (it decides on the host whether to skip an update).

Pruned weights stay exactly zero: the masks are multiplied in after every update, in every mode.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What ``compile`` hands to torch.compile; tests swap in a counting backend of their own (torch.compile accepts
# any callable as a backend).
BACKEND: object = "inductor"


def autocast(device: torch.device, precision: str):
    """The forward pass's autocast for ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def prepare(model: nn.Module) -> None:
    """The memory layout a model trains fastest in, before its optimizer is made: on a GPU, a conv net in
    channels-last (NHWC, what cuDNN's tensor-core convolutions want). Parameters change layout in place, so
    masks and saved states still fit them."""
    param = next(model.parameters(), None)
    if param is not None and param.is_cuda and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)


class TrainStep:
    """``step(x, y) -> (loss, predictions)``: the batch's loss and the forward pass's predicted classes (tensors
    on the device: nothing here waits on them)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, precision: str,
                 compile: object, regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None,
                 forward: Optional[nn.Module] = None):
        """``forward``: what runs the batch (the model under DistributedDataParallel across processes);
        the parameters, masks and regularizer stay the model's own."""
        self.model, self.optimizer, self.loss_fn, self.regularizer = model, optimizer, loss_fn, regularizer
        self.forward = forward if forward is not None else model
        self.device = next(model.parameters()).device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        if compile:
            _state_made_eagerly(optimizer, self.scaler, self.device)
        self.pairs: tuple[list, list] = ([], [])
        self.compiled = bool(compile)
        # A CUDA-graph replay reuses its output memory at the next step, and the loop keeps each step's loss and
        # predictions until the epoch ends: those are copied out (two small kernels) before the next replay.
        self.copies_outputs = compile == "reduce-overhead" and self.device.type == "cuda"
        self.shapes: dict = {}           # batch shape -> calls of the compiled step timed as compiling
        self.compile_seconds = 0.0       # first calls per shape of a compiled step
        # A shape's first call compiles; with CUDA graphs its second records the graph (the first only warms
        # up): both count as compiling.
        self.calls_compiling = 2 if self.copies_outputs else 1
        # fp16's scaler unscales, checks for infinities and skips steps on the host: the update stays eager.
        body = self._forward_backward if self.scaler is not None else self._whole_step
        if compile:
            # Each stage's step compiles anew (another model, other shapes); dropping the last stage's code and
            # graphs keeps a many-round schedule under dynamo's limit of entries per function, past which it
            # would quietly fall back to eager.
            torch.compiler.reset()
            mode = "reduce-overhead" if compile == "reduce-overhead" else None
            # Static shapes: an epoch's shorter last batch gets a graph of its own. Left to dynamo's automatic
            # dynamic shapes, that batch would recompile the step with a symbolic batch size, and every full
            # batch after it would run the slower symbolic graph (and, with CUDA graphs, record anew).
            body = torch.compile(body, mode=mode, backend=BACKEND, dynamic=False)
        self.body = body

    def use_masks(self, model: nn.Module, masks) -> None:
        """The (parameter, mask) pairs re-applied after each update; empty for a dense model."""
        if not masks:
            self.pairs = ([], [])
            return
        params = dict(model.named_parameters())
        names = list(masks)
        self.pairs = ([params[n] for n in names], [masks[n].to(params[n].device) for n in names])

    def _loss(self, x, y, weight):
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.loss_fn(logits, x, y)
            if weight != 1.0:  # a rank's share of a global batch (prune_cli.distributed)
                loss = loss * weight
            if self.regularizer is not None:
                loss = loss + self.regularizer(self.model)
        # Training accuracy from the step's own predictions (no extra pass over the data); the loop compares
        # them with the labels once per epoch, so a step adds one small kernel.
        return loss, logits.detach().argmax(dim=1)

    def _forward_backward(self, x, y, weight):
        loss, predictions = self._loss(x, y, weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss.detach(), predictions

    def _whole_step(self, x, y, params, masks, weight):
        loss, predictions = self._loss(x, y, weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        _apply(params, masks)
        return loss.detach(), predictions

    def __call__(self, x, y, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the batch; ``weight`` scales its loss (1.0 but in a run across processes)."""
        if self.compiled and self.shapes.get(tuple(x.shape), 0) < self.calls_compiling:
            return self._compiling(x, y, weight)  # compiles (and records a CUDA graph): timed, per batch shape
        params, masks = self.pairs
        if self.scaler is None:
            loss, predictions = self.body(x, y, params, masks, weight)
        else:
            loss, predictions = self.body(x, y, weight)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            _apply(params, masks)
        if self.copies_outputs:
            return loss.clone(), predictions.clone()
        return loss, predictions

    def _compiling(self, x, y, weight) -> tuple[torch.Tensor, torch.Tensor]:
        """A compiled step's first calls for a batch shape, timed to the end of their work: what compiling and
        recording cost (the step's own work inside them is a rounding error next to tens of seconds)."""
        import time
        shape = tuple(x.shape)
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        _synchronize(self.device)
        started = time.perf_counter()
        self.compiled = False  # the call itself goes through __call__'s ordinary path
        try:
            out = self(x, y, weight)
        finally:
            self.compiled = True
        _synchronize(self.device)
        self.compile_seconds += time.perf_counter() - started
        return out

    def reapply(self) -> None:
        """Multiply the masks in now (after the masks changed between steps)."""
        _apply(*self.pairs)


def _state_made_eagerly(optimizer: torch.optim.Optimizer, scaler, device: torch.device) -> None:
    """State that would otherwise be created inside the first compiled step, made before it. Tensors created in
    a CUDA-graph step are that graph's outputs, and their memory is reused at the next replay: SGD's momentum
    buffers (made on its first step) and the fp16 scaler's scale. A zero buffer gives the same first step
    (``0 * momentum + grad`` is the gradient, as the clone SGD would make; dampening is 0 here)."""
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group["momentum"] and not group["dampening"]:
                for param in group["params"]:
                    optimizer.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
    if scaler is not None:
        scaler.scale(torch.zeros((), device=device))  # creates the scale and its growth tracker


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _apply(params, masks) -> None:
    if not params:  # a dense model: not even the no-grad context (every step of an eager loop comes here)
        return
    with torch.no_grad():
        for param, mask in zip(params, masks):
            param.mul_(mask)
