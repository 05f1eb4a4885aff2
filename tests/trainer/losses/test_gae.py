"""GAE (eq. 7-9) and whitening against hand-computed values and a plain-loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.losses.gae import gae, whiten


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float):
    """Eq. 7-9 literally, on one unpadded response: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    n = len(rewards)
    next_value = [values[t + 1] if t + 1 < n else 0.0 for t in range(n)]
    deltas = [rewards[t] + gamma * next_value[t] - values[t] for t in range(n)]  # eq. 8
    advantages = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]  # eq. 7
    returns = [advantages[t] + values[t] for t in range(n)]  # eq. 9
    return advantages, returns


def test_gamma_lambda_one_gives_reward_to_go():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # deltas: 0 + .6 - .5 = .1, 0 + .7 - .6 = .1, 1 + 0 - .7 = .3; A = suffix sums
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_hand_computed_discounted():
    rewards = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[1.0, 1.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 2), gamma=0.5, lam=0.5)
    # delta_1 = 2 + 0 - 1 = 1; delta_0 = 1 + 0.5 * 1 - 1 = 0.5; A_0 = 0.5 + 0.25 * 1 = 0.75
    torch.testing.assert_close(adv, torch.tensor([[0.75, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.75, 2.0]]))


def test_lambda_zero_is_one_step_td():
    rewards = torch.tensor([[0.0, 0.0, 3.0]])
    values = torch.tensor([[1.0, 2.0, 4.0]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.9 * 2 - 1, 0.9 * 4 - 2, 3.0 - 4.0]]))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=4),
    pad=st.integers(min_value=0, max_value=3),
    gamma=st.floats(min_value=0.0, max_value=1.0),
    lam=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_matches_reference_loop_with_padding(lengths, pad, gamma, lam, seed):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + pad
    rewards = torch.randn(len(lengths), width, generator=gen, dtype=torch.float64)
    values = torch.randn(len(lengths), width, generator=gen, dtype=torch.float64)
    mask = torch.zeros(len(lengths), width)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        # garbage on padding must not matter
        rewards[row, n:] = 1e6
        values[row, n:] = float("nan")
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert not torch.isnan(adv).any() and not torch.isnan(ret).any()
    for row, n in enumerate(lengths):
        ref_adv, ref_ret = reference_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), gamma, lam)
        assert adv[row, :n].tolist() == pytest.approx(ref_adv, rel=1e-9, abs=1e-9)
        assert ret[row, :n].tolist() == pytest.approx(ref_ret, rel=1e-9, abs=1e-9)
        assert (adv[row, n:] == 0).all() and (ret[row, n:] == 0).all()


def test_outputs_are_detached_targets():
    values = torch.randn(2, 4, requires_grad=True)
    rewards = torch.randn(2, 4, requires_grad=True)
    adv, ret = gae(rewards, values, torch.ones(2, 4), gamma=0.99, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5, lam=0.9)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), gamma=1.0, lam=0.9)


def test_whiten_normalizes_real_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten(x, mask)
    real = out[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.pow(2).mean().item() == pytest.approx(1.0, abs=1e-5)  # population variance
    assert (out[~mask.bool()] == 0).all()
    # same values as whitening the real tokens alone
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(real, (vals - 3.0) / math.sqrt(2.0), atol=1e-5, rtol=1e-5)


def test_whiten_without_shift_keeps_mean():
    x = torch.tensor([[1.0, 3.0, 5.0]])
    out = whiten(x, torch.ones(1, 3), shift_mean=False)
    assert out.mean().item() == pytest.approx(3.0, abs=1e-6)
    torch.testing.assert_close(out - 3.0, whiten(x, torch.ones(1, 3)))


def test_whiten_single_token_is_finite():
    out = whiten(torch.tensor([[2.0, 0.0]]), torch.tensor([[1, 0]]))
    assert torch.isfinite(out).all() and out[0, 0].item() == pytest.approx(0.0)
