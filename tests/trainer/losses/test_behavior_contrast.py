"""The steering stage's behavior contrast: value, and which way its gradient pushes."""

import math

import pytest
import torch

from trainer.losses.behavior_contrast import behavior_contrast_loss


def test_value_is_minus_log_sigmoid_of_the_scaled_difference():
    own, mirrored = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.0])
    expected = (-math.log(1 / (1 + math.exp(-0.5 * 2.0))) - math.log(1 / (1 + math.exp(-0.5 * -1.0)))) / 2
    assert behavior_contrast_loss(own, mirrored, beta=0.5).item() == pytest.approx(expected, rel=1e-6)
    assert behavior_contrast_loss(own, own, beta=1.0).item() == pytest.approx(math.log(2))  # sentence ignored
    assert behavior_contrast_loss(torch.tensor([0.0]), torch.tensor([-200.0]), 1.0).item() < 1e-30


def test_gradient_raises_the_own_sentence_and_lowers_the_mirror():
    own = torch.tensor([-5.0, -7.0], requires_grad=True)
    mirrored = torch.tensor([-5.0, -6.0], requires_grad=True)
    behavior_contrast_loss(own, mirrored, beta=0.1).backward()
    assert (own.grad < 0).all() and (mirrored.grad > 0).all()  # descent: own up, mirrored down
    assert own.grad[1].abs() > own.grad[0].abs()  # the pair ranked wrong pushes harder


def test_shapes_and_beta_are_checked():
    with pytest.raises(ValueError, match=r"\(M,\)"):
        behavior_contrast_loss(torch.zeros(2), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="beta"):
        behavior_contrast_loss(torch.zeros(2), torch.zeros(2), 0.0)
