"""PPO clipped surrogate (eq. 5-6), critic loss (eq. 11), masked mean and entropy."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.ppo import entropy_from_logits, explained_variance, masked_mean, ppo_policy_loss, value_loss


def test_masked_mean_variants():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx(13.0 / 4)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 5.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([2.5, 2.0, 6.0]))
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0  # empty -> 0, not NaN


def reference_policy_loss(logp, old, adv, lengths, eps):
    terms, clipped = [], 0
    for b, n in enumerate(lengths):
        for t in range(n):
            ratio = math.exp(logp[b][t] - old[b][t])
            surrogate = min(ratio * adv[b][t], max(1 - eps, min(1 + eps, ratio)) * adv[b][t])  # eq. 5
            terms.append(-surrogate)
            clipped += abs(ratio - 1) > eps  # CleanRL's clipfrac: the ratio left the trust region
    return sum(terms) / len(terms), clipped / len(terms)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -3.0, 2.0]])
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, torch.ones(1, 3), clip_range=0.2)
    assert loss.item() == pytest.approx(0.0)
    loss, _ = ppo_policy_loss(logp, logp.clone(), adv, torch.tensor([[1, 0, 1]]), clip_range=0.2)
    assert loss.item() == pytest.approx(-1.5)
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0)
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_policy_loss_matches_reference_loop_with_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = [6, 2, 4]
    logp = torch.randn(3, 6, generator=gen, dtype=torch.float64) * 0.3
    old = logp + torch.randn(3, 6, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    mask = torch.zeros(3, 6)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    ref_loss, ref_clipfrac = reference_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), lengths, 0.2)
    assert loss.item() == pytest.approx(ref_loss, abs=1e-12)
    assert stats["clipfrac"] == pytest.approx(ref_clipfrac)
    assert 0 < stats["clipfrac"] < 1
    # padding values are irrelevant
    logp2 = logp.clone()
    logp2[~mask.bool()] = 50.0
    assert ppo_policy_loss(logp2, old, adv, mask, 0.2)[0].item() == pytest.approx(ref_loss, abs=1e-12)


@pytest.mark.parametrize(
    ("ratio", "advantage", "clipped"),
    [
        (1.5, 1.0, True),  # already gained enough: no push further up
        (1.5, -1.0, False),  # ratio grew on a bad action: the pessimistic term still pushes down
        (0.5, -1.0, True),  # already lowered enough
        (0.5, 1.0, False),  # lowered a good action: still pushed up
        (1.1, 1.0, False),  # inside the trust region
    ],
)
def test_clipping_zeroes_the_gradient_only_in_the_clipped_direction(ratio, advantage, clipped):
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, stats = ppo_policy_loss(logp, old, torch.tensor([[advantage]]), torch.ones(1, 1), clip_range=0.2)
    loss.backward()
    # clipfrac counts ratios outside [1 - eps, 1 + eps] (CleanRL), whichever way the advantage points
    assert stats["clipfrac"] == (1.0 if abs(ratio - 1) > 0.2 else 0.0)
    if clipped:
        assert logp.grad.item() == 0.0
        assert loss.item() == pytest.approx(-advantage * min(max(ratio, 0.8), 1.2))
    else:
        # d(-A * ratio)/dlogp = -A * ratio: gradient descent raises logp iff A > 0
        assert logp.grad.item() == pytest.approx(-advantage * ratio)


def test_policy_loss_gradient_does_not_reach_old_logprobs_or_advantages():
    torch.manual_seed(0)
    logp = torch.randn(2, 3, requires_grad=True)
    # Ratios near 1, inside the clip range: the unclipped branch carries gradient to logp (with
    # independent random old log-probs every ratio can fall outside it and the gradient is 0).
    old = (logp.detach() + 0.01 * torch.randn(2, 3)).requires_grad_()
    adv = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, _ = ppo_policy_loss(logp, old, adv, mask, 0.2)
    loss.backward()
    assert old.grad is None and adv.grad is None
    assert (logp.grad[~mask.bool()] == 0).all() and (logp.grad[mask.bool()] != 0).any()


def test_value_loss_unclipped_is_half_mse():
    values = torch.tensor([[1.0, 2.0, 5.0]], requires_grad=True)
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, values.detach(), returns, mask, clip_range_value=None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    assert stats["mse"] == pytest.approx(0.5) and stats["clipfrac"] == 0.0
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))  # residual / n_real


def test_value_clipping_takes_the_pessimistic_error():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    returns = torch.tensor([[2.0, 2.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip_range_value=0.2)
    # token 0: clipped value 0.2, error (0.2-2)^2 = 3.24 > (1-2)^2 = 1 -> clipped, no gradient
    # token 1: inside the range, clipped == unclipped, error 1.9^2
    assert loss.item() == pytest.approx(0.5 * (3.24 + 3.61) / 2)
    assert stats["clipfrac"] == pytest.approx(0.5)
    loss.backward()
    assert values.grad[0, 0].item() == 0.0
    assert values.grad[0, 1].item() == pytest.approx((0.1 - 2.0) / 2)


def test_value_loss_matches_reference_loop():
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    old = values + 0.3 * torch.randn(3, 5, generator=gen, dtype=torch.float64)
    returns = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    lengths = [5, 3, 1]
    mask = torch.zeros(3, 5)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    terms = []
    for b, n in enumerate(lengths):
        for t in range(n):
            v, o, r = values[b, t].item(), old[b, t].item(), returns[b, t].item()
            vc = o + max(-0.1, min(0.1, v - o))
            terms.append(0.5 * max((v - r) ** 2, (vc - r) ** 2))
    loss, stats = value_loss(values, old, returns, mask, 0.1)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)
    assert -10 < stats["explained_var"] <= 1


def test_entropy_uniform_peaked_and_reference():
    vocab = 7
    uniform = torch.zeros(1, 2, vocab)
    assert entropy_from_logits(uniform, torch.ones(1, 2)).item() == pytest.approx(math.log(vocab), rel=1e-6)
    peaked = torch.full((1, 1, vocab), -1e4)
    peaked[0, 0, 3] = 0.0
    assert entropy_from_logits(peaked, torch.ones(1, 1)).item() == pytest.approx(0.0, abs=1e-6)
    banned = torch.zeros(1, 1, vocab)
    banned[0, 0, :3] = float("-inf")  # -inf logits contribute 0, not NaN
    assert entropy_from_logits(banned, torch.ones(1, 1)).item() == pytest.approx(math.log(vocab - 3), rel=1e-6)

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, vocab, generator=gen, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = [
        torch.distributions.Categorical(logits=logits[b, t]).entropy().item()
        for b in range(2)
        for t in range(3)
        if mask[b, t]
    ]
    ent = entropy_from_logits(logits, mask)
    assert ent.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    ent.backward()
    assert (logits.grad[~mask.bool()] == 0).all() and logits.grad[mask.bool()].abs().sum() > 0


def test_bad_clip_ranges_rejected():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(x, x, x, x, clip_range=0.0)
    with pytest.raises(ValueError, match="clip_range_value"):
        value_loss(x, x, x, x, clip_range_value=-1.0)


def test_kl_stats_between_old_and_new_policy():
    """approx_kl = k3 and old_approx_kl = k1 of KL(pi_old || pi_theta), CleanRL's two estimators."""
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    mask = torch.tensor([[1, 1, 0]])
    _, at_one = ppo_policy_loss(old.clone(), old, torch.ones(1, 3), mask, 0.2)
    assert at_one["approx_kl"] == 0.0 and at_one["old_approx_kl"] == 0.0 and at_one["clipfrac"] == 0.0
    logp = old + torch.tensor([[0.1, -0.3, 9.0]])  # the padded token's huge ratio must not count
    _, stats = ppo_policy_loss(logp, old, torch.ones(1, 3), mask, 0.2)
    log_ratios = [0.1, -0.3]
    k3 = sum(math.expm1(r) - r for r in log_ratios) / 2
    assert stats["approx_kl"] == pytest.approx(k3) and stats["approx_kl"] > 0
    assert stats["old_approx_kl"] == pytest.approx(sum(-r for r in log_ratios) / 2)
    assert stats["clipfrac"] == pytest.approx(0.5)  # exp(-0.3) = 0.74 < 0.8; exp(0.1) inside


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 6.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.5), returns, mask) == pytest.approx(0.0)
    assert explained_variance(returns + 1.0, returns, mask) == pytest.approx(1.0)  # a constant offset is free
    noisy = returns + torch.tensor([[0.5, -0.5, 0.5, 0.0], [-0.5, 0.5, -0.5, 0.0]])
    real = returns[mask.bool()]
    expected = 1 - (noisy - returns)[mask.bool()].var(unbiased=False) / real.var(unbiased=False)
    assert explained_variance(noisy, returns, mask) == pytest.approx(expected.item())
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))  # returns do not vary
