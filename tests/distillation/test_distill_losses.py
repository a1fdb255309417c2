"""Distillation losses against hand-written references."""

import math

import pytest
import torch
import torch.nn.functional as F

from edgeopt.distillation.losses import (
    distillation_loss,
    hint_loss,
    kd_kl_loss,
    logit_mse_loss,
    soft_loss,
)


def _naive_kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """sum_c p_t log(p_t / p_s) averaged over samples, times T^2, in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return total / len(student) * t * t


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_kd_loss_matches_formula(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5) * 3
    assert kd_kl_loss(s, t, temperature).item() == pytest.approx(_naive_kd(s, t, temperature),
                                                                 rel=1e-5)


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(1)
    s = torch.randn(4, 3)
    assert kd_kl_loss(s, s.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_kl_loss(s, s + torch.randn(4, 3), 3.0).item() > 0


def test_t_squared_keeps_gradient_scale():
    """Without T^2 the soft gradient shrinks like 1/T^2; with it the scale stays the same
    order (Hinton et al. 2015, section 2)."""
    torch.manual_seed(2)
    teacher = torch.randn(32, 10)
    norms = []
    for temperature in (2.0, 8.0):
        student = torch.randn(32, 10, requires_grad=True)
        kd_kl_loss(student, teacher, temperature).backward()
        unscaled = student.grad.norm().item() / temperature**2
        norms.append((student.grad.norm().item(), unscaled))
    (scaled_2, raw_2), (scaled_8, raw_8) = norms
    assert raw_2 / raw_8 > 8  # unscaled: ~16x smaller at 4x the temperature
    assert 0.25 < scaled_2 / scaled_8 < 4  # scaled: the same order of magnitude


def test_mse_and_soft_dispatch():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert logit_mse_loss(s, t).item() == pytest.approx(((s - t) ** 2).mean().item())
    assert soft_loss(s, t, temperature=2.0, kind="mse").item() == logit_mse_loss(s, t).item()
    with pytest.raises(ValueError, match="unknown soft loss"):
        soft_loss(s, t, temperature=2.0, kind="l1")


def test_distillation_loss_weights_soft_and_hard_terms():
    torch.manual_seed(3)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    total, soft, hard = distillation_loss(s, t, y, temperature=4.0, alpha=0.7)
    assert soft.item() == pytest.approx(kd_kl_loss(s, t, 4.0).item())
    assert hard.item() == pytest.approx(F.cross_entropy(s, y).item())
    assert total.item() == pytest.approx(0.7 * soft.item() + 0.3 * hard.item(), rel=1e-6)
    unlabeled, soft2, _ = distillation_loss(s, t, None, temperature=4.0, alpha=0.7)
    assert unlabeled.item() == pytest.approx(soft2.item())


def test_teacher_gets_no_gradient_from_the_soft_term():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    distillation_loss(s, t, None, temperature=2.0, alpha=1.0)[0].backward()
    assert t.grad is None and s.grad is not None


def test_hint_loss_is_mse():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert hint_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
