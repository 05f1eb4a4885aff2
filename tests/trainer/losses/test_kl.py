"""Per-token KL estimators and KL-penalized rewards (eq. 10)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.kl import adaptive_kl_coef, kl_loss, kl_penalized_rewards, per_token_kl


def test_estimators_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    torch.testing.assert_close(per_token_kl(logp, ref), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(per_token_kl(logp, ref, kind="k2"), torch.tensor([[0.5, 0.0]]))
    # r = pi_ref / pi = e^-1: (r - 1) - log r = e^-1 - 1 + 1
    torch.testing.assert_close(per_token_kl(logp, ref, kind="k3"), torch.tensor([[math.exp(-1.0), 0.0]]))


def test_k3_is_never_negative_k1_can_be():
    gen = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    assert (per_token_kl(logp, ref, kind="k3") >= 0).all()
    assert (per_token_kl(logp, ref, kind="k1") < 0).any()


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_estimators_are_unbiased_for_kl_policy_to_reference(kind):
    """Tokens sampled from pi: the mean estimate approaches the exact KL(pi || pi_ref)."""
    gen = torch.Generator().manual_seed(1)
    pi = torch.softmax(torch.randn(6, generator=gen), 0)
    ref = torch.softmax(torch.randn(6, generator=gen), 0)
    exact = (pi * (pi.log() - ref.log())).sum().item()
    tokens = torch.multinomial(pi, 200_000, replacement=True, generator=gen)
    estimate = per_token_kl(pi.log()[tokens][None], ref.log()[tokens][None], kind=kind).mean().item()
    assert estimate == pytest.approx(exact, abs=0.01)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="k1"):
        per_token_kl(torch.zeros(1, 1), torch.zeros(1, 1), kind="exact")


def reference_rewards(score, logp, ref, lengths, coef):
    rows = []
    for b, n in enumerate(lengths):
        row = [-coef * (logp[b][t] - ref[b][t]) for t in range(n)]
        row[n - 1] += score[b]
        rows.append(row)
    return rows


def test_score_on_last_real_token_minus_kl_hand_computed():
    score = torch.tensor([1.0, 2.0])
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -3.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalized_rewards(score, logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5], [0.5, -1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05], [-0.05, 2.1, 0.0]]))


def test_matches_reference_loop_and_padding_is_inert():
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 1, 3, 4]
    score = torch.randn(4, generator=gen, dtype=torch.float64)
    logp = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    ref = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    mask = torch.zeros(4, 5)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    rewards, _ = kl_penalized_rewards(score, logp, ref, mask, kl_coef=0.3)
    expected = reference_rewards(score.tolist(), logp.tolist(), ref.tolist(), lengths, 0.3)
    for b, n in enumerate(lengths):
        assert rewards[b, :n].tolist() == pytest.approx(expected[b], abs=1e-12)
        assert (rewards[b, n:] == 0).all()
    # garbage in padding (even inf) changes nothing
    logp_garbage = logp.clone()
    logp_garbage[~mask.bool()] = float("inf")
    rewards2, kl2 = kl_penalized_rewards(score, logp_garbage, ref, mask, kl_coef=0.3)
    torch.testing.assert_close(rewards2, rewards)
    assert torch.isfinite(kl2).all()


def test_outputs_detached_and_empty_rows_rejected():
    logp = torch.randn(2, 3, requires_grad=True)
    rewards, kl = kl_penalized_rewards(torch.ones(2), logp, torch.zeros(2, 3), torch.ones(2, 3), 0.1)
    assert not rewards.requires_grad and not kl.requires_grad
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalized_rewards(torch.ones(2), logp, torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_penalized_rewards(torch.ones(2), logp, torch.zeros(2, 3), torch.ones(2, 3), -1.0)
    with pytest.raises(ValueError, match="score"):
        kl_penalized_rewards(torch.ones(3), logp, torch.zeros(2, 3), torch.ones(2, 3), 0.1)


def test_adaptive_kl_coefficient_moves_toward_the_target():
    # KL above the target: a stronger pull back to the reference; below: a weaker one; at it: unchanged
    assert adaptive_kl_coef(0.1, current_kl=7.0, target=6.0, n_steps=16, horizon=1000) > 0.1
    assert adaptive_kl_coef(0.1, current_kl=5.0, target=6.0, n_steps=16, horizon=1000) < 0.1
    assert adaptive_kl_coef(0.1, current_kl=6.0, target=6.0, n_steps=16, horizon=1000) == pytest.approx(0.1)
    # TRL's formula, inside the clip: e = 6.6 / 6 - 1 = 0.1 -> coef * (1 + 0.1 * 16 / 1000)
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 16, 1000) == pytest.approx(0.1 * (1 + 0.1 * 16 / 1000))


def test_adaptive_kl_error_is_clipped_at_twenty_percent():
    up = adaptive_kl_coef(0.1, current_kl=600.0, target=6.0, n_steps=100, horizon=100)
    assert up == pytest.approx(0.1 * 1.2)
    assert adaptive_kl_coef(0.1, current_kl=8.0, target=6.0, n_steps=100, horizon=100) == pytest.approx(up)
    down = adaptive_kl_coef(0.1, current_kl=-5.0, target=6.0, n_steps=100, horizon=100)  # k1 can be negative
    assert down == pytest.approx(0.1 * 0.8)
    assert adaptive_kl_coef(0.1, current_kl=0.0, target=6.0, n_steps=100, horizon=100) == pytest.approx(down)
    # iterated, the coefficient keeps moving the same way; zero stays zero
    coef = 0.1
    for _ in range(10):
        coef = adaptive_kl_coef(coef, 60.0, 6.0, 16, 160)
    assert coef == pytest.approx(0.1 * 1.02**10)
    assert adaptive_kl_coef(0.0, 60.0, 6.0, 16, 160) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": 0.0},
        {"horizon": 0},
        {"n_steps": -1},
        {"kl_coef": -0.1},
        {"current_kl": float("nan")},
        {"current_kl": float("inf")},
    ],
)
def test_adaptive_kl_rejects_bad_arguments(kwargs):
    args = {"kl_coef": 0.1, "current_kl": 1.0, "target": 6.0, "n_steps": 16, "horizon": 100, **kwargs}
    with pytest.raises(ValueError):
        adaptive_kl_coef(**args)


def exact_kl_gradients(theta: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/d theta of KL(pi || ref) and of KL(ref || pi), pi = softmax(theta), by autograd on the exact sums."""
    logits = theta.clone().requires_grad_(True)
    logpi = torch.log_softmax(logits, 0)
    (forward,) = torch.autograd.grad((logpi.exp() * (logpi - ref.log())).sum(), logits)
    logits = theta.clone().requires_grad_(True)
    (reverse,) = torch.autograd.grad((ref * (ref.log() - torch.log_softmax(logits, 0))).sum(), logits)
    return forward, reverse


@pytest.mark.parametrize(("kind", "which"), [("k2", "forward"), ("k3", "reverse")])
def test_kl_loss_gradient_is_the_kl_gradient(kind, which):
    """Tokens sampled from pi: k2's loss gradient estimates grad KL(pi || ref) (eq. 10's KL), k3's (GRPO) that
    of KL(ref || pi). The module docstring's table, checked by sampling."""
    gen = torch.Generator().manual_seed(2)
    theta = 2 * torch.randn(6, generator=gen)  # far apart, so the two KLs' gradients differ
    ref = torch.softmax(2 * torch.randn(6, generator=gen), 0)
    expected = dict(zip(("forward", "reverse"), exact_kl_gradients(theta, ref), strict=True))[which]
    tokens = torch.multinomial(torch.softmax(theta, 0), 1_000_000, replacement=True, generator=gen)
    logits = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(logits, 0)[tokens][None]  # (1, N)
    loss = kl_loss(logp, ref.log()[tokens][None], torch.ones_like(logp), kind=kind)
    (grad,) = torch.autograd.grad(loss, logits)
    scale = expected.abs().max().item()
    torch.testing.assert_close(grad, expected, atol=0.15 * scale, rtol=0.0)
    other = dict(zip(("forward", "reverse"), exact_kl_gradients(theta, ref), strict=True))
    assert (other["reverse" if which == "forward" else "forward"] - expected).abs().max() > 0.5 * scale


def test_kl_loss_is_a_masked_mean_and_refuses_k1():
    logp = torch.tensor([[-1.0, -2.0, -9.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its huge log-ratio must not count
    loss = kl_loss(logp, ref, mask, kind="k2")
    assert loss.item() == pytest.approx((0.5 * 1.0 + 0.5 * 1.0) / 2)
    loss.backward()
    assert logp.grad[0, 2] == 0 and logp.grad[0, 0] == pytest.approx(0.5) and logp.grad[0, 1] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="expected gradient is 0"):
        kl_loss(logp, ref, mask, kind="k1")
