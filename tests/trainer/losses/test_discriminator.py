"""Discriminator loss (eq. 4 with log(1 - D)) and the rewards read from it."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.discriminator import contrastive_reward, discriminator_loss, discriminator_reward


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def reference_loss(real, fake, weights=None):
    weights = weights or [1.0] * len(fake)
    loss_real = sum(-math.log(sigmoid(z)) for z in real) / len(real)
    loss_fake = sum(-w * math.log(1.0 - sigmoid(z)) for z, w in zip(fake, weights, strict=True)) / sum(weights)
    return loss_real + loss_fake  # negative of eq. 4


def test_undecided_discriminator_hand_computed():
    loss, stats = discriminator_loss(torch.zeros(3), torch.zeros(5))
    assert loss.item() == pytest.approx(2 * math.log(2))
    assert stats["d_real"] == pytest.approx(0.5) and stats["d_fake"] == pytest.approx(0.5)
    assert stats["acc_real"] == 0.0 and stats["acc_fake"] == 0.0  # D = 0.5 is not a decision


def test_matches_reference_loop_with_and_without_weights():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(7, generator=gen, dtype=torch.float64) * 3
    fake = torch.randn(5, generator=gen, dtype=torch.float64) * 3
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    loss, stats = discriminator_loss(real, fake)
    assert loss.item() == pytest.approx(reference_loss(real.tolist(), fake.tolist()), abs=1e-12)
    loss_w, _ = discriminator_loss(real, fake, weights)
    assert loss_w.item() == pytest.approx(reference_loss(real.tolist(), fake.tolist(), weights.tolist()), abs=1e-12)
    assert stats["acc_real"] == pytest.approx((real > 0).double().mean().item())
    assert stats["acc_fake"] == pytest.approx((fake < 0).double().mean().item())
    # a zero-weight fake is the same as no fake at all
    keep = weights > 0
    loss_dropped, _ = discriminator_loss(real, fake[keep], weights[keep])
    assert loss_dropped.item() == pytest.approx(loss_w.item(), abs=1e-12)


def test_gradient_pushes_real_up_and_fake_down_and_is_stable():
    real = torch.tensor([0.0, -50.0, 80.0], requires_grad=True)
    fake = torch.tensor([0.0, 50.0, -80.0], requires_grad=True)
    loss, _ = discriminator_loss(real, fake)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx((math.log(2) + 50) / 3 * 2, rel=1e-6)
    assert (real.grad <= 0).all() and real.grad[1] < 0  # descent raises real logits
    assert (fake.grad >= 0).all() and fake.grad[1] > 0  # descent lowers fake logits


def test_training_a_logistic_discriminator_separates_real_from_fake():
    gen = torch.Generator().manual_seed(1)
    real_x = torch.randn(64, 2, generator=gen) + torch.tensor([2.0, 0.0])
    fake_x = torch.randn(64, 2, generator=gen) - torch.tensor([2.0, 0.0])
    layer = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(50):
        loss, stats = discriminator_loss(layer(real_x).squeeze(1), layer(fake_x).squeeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["acc_real"] > 0.9 and stats["acc_fake"] > 0.9
    assert stats["d_real"] > 0.8 and stats["d_fake"] < 0.2


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="at least one"):
        discriminator_loss(torch.zeros(0), torch.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        discriminator_loss(torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="fake_weights"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, -1.0]))


def test_reward_kinds():
    logits = torch.tensor([0.0, 2.0, -1.0], requires_grad=True)
    log_d = discriminator_reward(logits)
    torch.testing.assert_close(log_d, torch.tensor([math.log(0.5), math.log(sigmoid(2.0)), math.log(sigmoid(-1.0))]))
    torch.testing.assert_close(discriminator_reward(logits, "prob"), torch.tensor([0.5, sigmoid(2.0), sigmoid(-1.0)]))
    logit = discriminator_reward(logits, "logit")
    torch.testing.assert_close(logit, logits.detach())
    for kind in ("log_d", "prob", "logit"):
        assert not discriminator_reward(logits, kind).requires_grad
        # every kind is monotone in D
        reward = discriminator_reward(logits, kind)
        assert reward[1] > reward[0] > reward[2]
    logit += 1  # the returned tensor must not alias the logits
    assert logits[0].item() == 0.0
    with pytest.raises(ValueError, match="log_d"):
        discriminator_reward(logits, "raw")


def test_contrastive_reward_cancels_the_behavior_independent_part():
    answer_realism = torch.tensor([5.0, -3.0])  # (s, a)-only component, shared by both behaviors
    preferred = answer_realism + torch.tensor([0.5, 1.0])
    opposite = answer_realism + torch.tensor([1.0, -1.0])
    torch.testing.assert_close(contrastive_reward(preferred, opposite), torch.tensor([-0.5, 2.0]))
    assert not contrastive_reward(preferred.requires_grad_(), opposite).requires_grad
    with pytest.raises(ValueError, match="must match"):
        contrastive_reward(torch.zeros(2), torch.zeros(3))


def test_one_sided_label_smoothing_targets_the_smoothed_label():
    from trainer.losses.discriminator import discriminator_loss

    # The smoothed optimum for a real logit is log(t / (1 - t)): confident reals are pulled back.
    z = torch.tensor([5.0, 0.0], requires_grad=True)
    fake = torch.tensor([-5.0])
    loss, _ = discriminator_loss(z, fake, real_label=0.9)
    loss.backward()
    assert z.grad[0] > 0  # descending the loss lowers the over-confident real logit
    assert z.grad[1] < 0  # and still raises an undecided one
    at_optimum = torch.tensor([math.log(9.0)], requires_grad=True)
    discriminator_loss(at_optimum, fake, real_label=0.9)[0].backward()
    assert abs(at_optimum.grad.item()) < 1e-6
    plain, _ = discriminator_loss(torch.tensor([5.0]), fake)
    smoothed, _ = discriminator_loss(torch.tensor([5.0]), fake, real_label=0.9)
    assert smoothed > plain
    with pytest.raises(ValueError, match="real_label"):
        discriminator_loss(z, fake, real_label=0.4)


def test_pairwise_auroc_counts_ties_as_half():
    from trainer.losses.discriminator import pairwise_auroc

    assert pairwise_auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert pairwise_auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert pairwise_auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert pairwise_auroc(torch.tensor([2.0, 0.0]), torch.tensor([1.0])) == 0.5
    assert math.isnan(pairwise_auroc(torch.tensor([]), torch.tensor([1.0])))
