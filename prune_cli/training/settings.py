"""``train.*`` and ``finetune.*`` as typed settings, the optimizers they name, and the lr at each epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class StageSettings:
    """``train.*`` or ``finetune.*`` from the config. The defaults below are the ones of ``conf/config.yaml``
    (a test holds them equal), for code that builds settings itself; a run takes every value from its config."""
    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: str = "none"               # none | cosine | step
    lr_milestones: tuple = (0.5, 0.75)   # step: fractions of the epochs where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    precision: str = "fp32"              # fp32 | bf16 | fp16: autocast for forward and loss (training/step.py)
    compile: object = False              # False | True | "reduce-overhead": the whole step compiled

    @classmethod
    def from_cfg(cls, cfg, epochs: Optional[int] = None) -> "StageSettings":
        """The settings of a ``train`` or ``finetune`` node (its other keys, e.g. ``finetune.distill``, are
        another stage's business); ``epochs`` replaces the node's own (a round's share)."""
        kinds = {"epochs": int, "lr": float, "batch_size": int, "optimizer": str, "momentum": float,
                 "weight_decay": float, "lr_decay": str, "lr_gamma": float,
                 "lr_milestones": lambda ms: tuple(float(m) for m in ms), "precision": str,
                 "compile": lambda c: c if isinstance(c, bool) else str(c)}
        values = {name: kind(cfg[name]) for name, kind in kinds.items() if name in cfg}
        if epochs is not None:
            values["epochs"] = int(epochs)
        return cls(**values)

    def with_epochs(self, epochs: int) -> "StageSettings":
        """The same settings for ``epochs`` epochs (a round's share of the fine-tuning)."""
        import dataclasses
        return dataclasses.replace(self, epochs=int(epochs))

    def lr_at(self, epoch: int) -> float:
        """The learning rate of an epoch: a pure function of the epoch, so a resumed run gets the same one."""
        if self.lr_decay == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.lr_decay == "step":
            passed = sum(1 for m in self.lr_milestones if epoch >= m * self.epochs)
            return self.lr * self.lr_gamma ** passed
        return self.lr


OPTIMIZERS = ("adam", "adamw", "sgd")
LR_DECAYS = ("none", "cosine", "step")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("reduce-overhead",)  # besides true and false


def make_optimizer(model: nn.Module, settings: StageSettings) -> torch.optim.Optimizer:
    """The stage's optimizer. On a GPU, eager steps use the fused kernels (one launch for all parameters); a
    compiled step lets the compiler fuse the update itself, with the learning rate a tensor (changing it
    each epoch then needs no recompile) and, for CUDA graphs, ``capturable`` state. A compiled fp16 stage
    updates eagerly after its gradient scaler, so its optimizer is an eager one. On the CPU, eager steps
    keep torch's default implementation, whose results the CPU tests and resume pin bit for bit."""
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = bool(params) and all(p.is_cuda for p in params)
    options: dict = {"weight_decay": settings.weight_decay}
    # fp16's gradient scaler steps the optimizer outside the compiled part (training/step.py): eager kernels.
    if settings.compile and settings.precision != "fp16":
        options["lr"] = torch.tensor(settings.lr, device=params[0].device if cuda else "cpu")
        if settings.optimizer != "sgd" and cuda:
            options["capturable"] = True
    else:
        options["lr"] = settings.lr
        if cuda:
            options["fused"] = True
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, **options)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, **options)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=settings.momentum, nesterov=settings.momentum > 0, **options)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


# Options that say how a run steps its optimizer (which kernels; lr as a tensor for a compiled step), not what it
# has learnt: a resumed run keeps the ones made for its own device and compile mode ("device" is result-neutral,
# so a run begun on one device may be resumed on another).
STEPPING = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Resume ``optimizer`` from ``saved`` (its ``state_dict()``, read onto the CPU). ``load_state_dict`` alone
    takes every option from the saved groups: a saved lr tensor would come back on the CPU, where a CUDA-graph
    step cannot read it, and the saved kernel choices would replace this device's."""
    keep = [{key: made[key] for key in ("lr", *STEPPING) if key in made} for made in optimizer.param_groups]
    optimizer.load_state_dict({**saved, "param_groups": [{**group, **mine}
                                                         for group, mine in zip(saved["param_groups"], keep)]})
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        _set_group_lr(group, float(saved_group["lr"]))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The epoch's learning rate, in place where it is a tensor (a compiled step reads it without recompiling)."""
    for group in optimizer.param_groups:
        _set_group_lr(group, lr)


def _set_group_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr
