"""Knowledge distillation from the unpruned model: the loss a pruned student trains on.

Hinton et al. (2015): (1 − w) · CE(student, labels) + w · T² · KL(teacher_T ‖ student_T),
with p_T = softmax(logits / T). The T² keeps the soft term's gradients on the scale of
the hard one's as T changes. w = 0 is plain cross-entropy.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """The student's loss: cross-entropy on `targets` mixed with the teacher's soft targets."""
    hard = F.cross_entropy(logits, targets)
    if weight == 0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * hard + weight * t * t * soft


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with no gradients: the teacher of the pruned model."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
