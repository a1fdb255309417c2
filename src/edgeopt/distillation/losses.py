"""Distillation losses as pure functions of tensors (differentiable; no module state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "hint_loss", "kd_kl_loss", "logit_mse_loss", "soft_loss"]


def kd_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the batch.

    The T^2 factor keeps the soft term's gradient magnitude independent of T, so `alpha`
    means the same thing at every temperature.
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def logit_mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits (Ba & Caruana, 'Do deep nets really need to be deep')."""
    return F.mse_loss(student, teacher)


def soft_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, kind: str = "kl"
) -> torch.Tensor:
    """The teacher-matching term: 'kl' (temperature-scaled) or 'mse' on logits."""
    if kind == "kl":
        return kd_kl_loss(student, teacher, temperature)
    if kind == "mse":
        return logit_mse_loss(student, teacher)
    raise ValueError(f"unknown soft loss {kind!r}; valid: 'kl', 'mse'")


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
    kind: str = "kl",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, soft, hard): total = alpha * soft + (1 - alpha) * CE(student, targets).

    Without targets (unlabeled data) the total is the soft term alone.
    """
    soft = soft_loss(student, teacher.detach(), temperature=temperature, kind=kind)
    if targets is None:
        return soft, soft, torch.zeros((), device=student.device)
    hard = F.cross_entropy(student, targets)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint: MSE between the (projected) student feature and the teacher feature."""
    return F.mse_loss(student_feature, teacher_feature.detach())
