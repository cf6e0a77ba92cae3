"""Knowledge distillation (Hinton et al. 2015): a student trained on the labels and on a teacher's softened
logits, loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels).

Used by ``finetune.distill=true`` (the pruned model learns from the dense one while it is fine-tuned) and by
the smaller-model baseline (``strategy=compress strategy.distill=true``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float):
    """A ``loss_fn(logits, x, y)`` for ``training.fit``; the teacher runs in eval mode, without gradients."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits, x, y):
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, log_target=True,
                      reduction="batchmean") * temperature ** 2
        return alpha * kd + (1 - alpha) * F.cross_entropy(logits, y)
    return loss
