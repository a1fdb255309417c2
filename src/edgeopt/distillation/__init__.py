"""Knowledge distillation: offline (frozen teacher), online (mutual learning) and self
distillation, with KL-on-soft-targets or MSE-on-logits and feature hints.

    student = eo.apply(student, eo.DistillConfig(temperature=4.0, alpha=0.7, epochs=5),
                       data=splits.train, teacher=teacher)
"""

from edgeopt.distillation.config import DistillConfig, LogitLoss, Mode
from edgeopt.distillation.losses import distillation_loss, hint_loss, kd_kl_loss, logit_mse_loss

__all__ = ["DistillConfig", "LogitLoss", "Mode", "distillation_loss", "hint_loss", "kd_kl_loss",
           "logit_mse_loss"]
