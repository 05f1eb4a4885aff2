"""Pairwise Bradley-Terry reward-model loss (eq. 12)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.bradley_terry import pairwise_loss


def test_hand_computed():
    loss, stats = pairwise_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-1))) / 2)
    assert stats["accuracy"] == 0.5 and stats["margin"] == pytest.approx(0.5)


def test_matches_reference_loop_and_is_stable():
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(9, generator=gen, dtype=torch.float64) * 4
    rejected = torch.randn(9, generator=gen, dtype=torch.float64) * 4
    expected = (
        sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True))
        / 9
    )
    assert pairwise_loss(chosen, rejected)[0].item() == pytest.approx(expected, abs=1e-12)
    far, _ = pairwise_loss(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert far.item() == pytest.approx(200.0)


def test_gradient_separates_the_pair():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.5, 2.0], requires_grad=True)
    loss, _ = pairwise_loss(chosen, rejected)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    torch.testing.assert_close(chosen.grad, -rejected.grad)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="at least one"):
        pairwise_loss(torch.zeros(0), torch.zeros(0))
