"""PRO listwise ranking loss (PRO paper eq. 5-11) with its SFT term."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.bradley_terry import pairwise_loss
from trainer.losses.pro import pro_loss


def reference_pro(logprobs, lengths, rewards=None, beta=None):
    """Eq. 6-11 literally, one query at a time, with temperatures T = 1 / reward gap."""
    total = 0.0
    for b in range(len(logprobs)):
        n = sum(1 for length in lengths[b] if length > 0)
        scores = [logprobs[b][i] / lengths[b][i] for i in range(n)]  # eq. 6
        ranking = 0.0
        for k in range(n - 1):
            if rewards is None:
                temps = {i: 1.0 for i in range(k, n)}  # eq. 8
            else:
                temps = {i: 1.0 / (rewards[b][k] - rewards[b][i]) for i in range(k + 1, n)}  # eq. 10
                temps[k] = min(temps.values())  # eq. 11
            denominator = sum(math.exp(scores[i] / temps[i]) for i in range(k, n))
            ranking -= math.log(math.exp(scores[k] / temps[k]) / denominator)  # eq. 9
        weight = 0.05 * (n - 1) ** 2 if beta is None else beta
        total += ranking + weight * -logprobs[b][0]  # eq. 7 with eq. 1 (summed NLL)
    return total / len(logprobs)


def test_hand_computed_three_candidates():
    logprobs = torch.tensor([[-2.0, -4.0, -9.0]])
    lengths = torch.tensor([[2, 2, 3]])  # normalized scores -1, -2, -3
    loss, stats = pro_loss(logprobs, lengths)
    ranking = math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(-1))
    assert stats["pro_loss"] == pytest.approx(ranking, rel=1e-6)
    assert stats["beta"] == pytest.approx(0.2) and stats["sft_loss"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(ranking + 0.2 * 2.0, rel=1e-6)
    assert stats["rank_accuracy"] == 1.0
    # dynamic temperature, rewards 1 > 0.5 > 0: stage 1 multipliers pos 1, neg (0.5, 1); stage 2 pos/neg 0.5
    loss_t, _ = pro_loss(logprobs, lengths, torch.tensor([[1.0, 0.5, 0.0]]), sft_weight_beta=0.0)
    stage1 = math.log(2 * math.exp(-1) + math.exp(-3)) + 1
    stage2 = math.log(1 + math.exp(-0.5))
    assert loss_t.item() == pytest.approx(stage1 + stage2, rel=1e-6)


def test_two_candidates_without_rewards_is_bradley_terry_on_normalized_scores():
    gen = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(5, 2, generator=gen) * 20
    lengths = torch.randint(1, 10, (5, 2), generator=gen)
    loss, _ = pro_loss(logprobs, lengths, sft_weight_beta=0.0)
    scores = logprobs / lengths
    assert loss.item() == pytest.approx(pairwise_loss(scores[:, 0], scores[:, 1])[0].item(), rel=1e-6)


@pytest.mark.parametrize("with_rewards", [False, True])
def test_matches_reference_loop(with_rewards):
    gen = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 30
    lengths = torch.randint(1, 12, (4, 5), generator=gen)
    rewards = None
    if with_rewards:
        # distinct, sorted best first (the reference divides by the gaps)
        rewards = torch.sort(torch.rand(4, 5, generator=gen, dtype=torch.float64) * 4, dim=1, descending=True).values
    loss, _ = pro_loss(logprobs, lengths, rewards)
    expected = reference_pro(logprobs.tolist(), lengths.tolist(), None if rewards is None else rewards.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_padding_candidates_change_nothing():
    gen = torch.Generator().manual_seed(2)
    logprobs = -torch.rand(2, 4, generator=gen, dtype=torch.float64) * 10
    lengths = torch.randint(1, 8, (2, 4), generator=gen)
    rewards = torch.tensor([[3.0, 2.0, 1.5, 0.0], [2.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    # the second query really has 2 candidates: pad slots 2-3 with garbage
    lengths[1, 2:] = 0
    logprobs[1, 2:] = float("nan")
    rewards[1, 2:] = float("nan")
    logprobs.requires_grad_(True)
    loss, _ = pro_loss(logprobs, lengths, rewards)
    row0 = pro_loss(logprobs[:1].detach(), lengths[:1], rewards[:1])[0]
    row1 = pro_loss(logprobs[1:, :2].detach(), lengths[1:, :2], rewards[1:, :2])[0]
    assert loss.item() == pytest.approx((row0.item() + row1.item()) / 2, rel=1e-10)
    expected = reference_pro(logprobs.detach().nan_to_num().tolist(), lengths.tolist(), rewards.nan_to_num().tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all() and (logprobs.grad[1, 2:] == 0).all()


def test_gradient_raises_the_best_and_lowers_the_worst():
    logprobs = torch.tensor([[-5.0, -5.0, -5.0]], requires_grad=True)
    loss, _ = pro_loss(logprobs, torch.tensor([[5, 5, 5]]), torch.tensor([[1.0, 0.5, 0.0]]))
    loss.backward()
    assert logprobs.grad[0, 0] < 0  # descent raises the best candidate
    assert logprobs.grad[0, 2] > 0  # and lowers the worst


def test_larger_reward_gap_penalizes_more():
    logprobs = torch.tensor([[-1.0, -1.0]])
    lengths = torch.ones(1, 2, dtype=torch.long)
    small, _ = pro_loss(logprobs, lengths, torch.tensor([[1.0, 0.9]]), sft_weight_beta=0.0)
    big, _ = pro_loss(logprobs, lengths, torch.tensor([[1.0, 0.0]]), sft_weight_beta=0.0)
    # equal scores: stage loss is log 2 either way; move the negative up and the gap matters
    up = torch.tensor([[-1.0, -0.5]])
    small_up, _ = pro_loss(up, lengths, torch.tensor([[1.0, 0.9]]), sft_weight_beta=0.0)
    big_up, _ = pro_loss(up, lengths, torch.tensor([[1.0, 0.0]]), sft_weight_beta=0.0)
    assert small.item() == pytest.approx(math.log(2)) and big.item() == pytest.approx(math.log(2))
    assert big_up.item() > small_up.item() > math.log(2)


def test_tied_rewards_give_a_constant_without_nan():
    logprobs = torch.tensor([[-3.0, -1.0, -2.0]], requires_grad=True)
    loss, _ = pro_loss(logprobs, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), sft_weight_beta=0.0)
    assert loss.item() == pytest.approx(math.log(3) + math.log(2))
    loss.backward()
    assert (logprobs.grad == 0).all()


def test_default_beta_and_sft_gradient_on_top_candidate_only():
    logprobs = torch.tensor([[-3.0, -1.0]], requires_grad=True)
    lengths = torch.tensor([[3, 1]])
    loss, stats = pro_loss(logprobs, lengths)
    assert stats["beta"] == pytest.approx(0.05)
    assert stats["rank_accuracy"] == 0.0  # the best candidate is currently less likely
    loss.backward()
    # d/d logprob_0 of [-log sigmoid(s0 - s1)] with s0 = lp0 / 3, plus beta * -1
    s0, s1 = -1.0, -1.0
    expected = -(1 - 1 / (1 + math.exp(-(s0 - s1)))) / 3 - 0.05
    assert logprobs.grad[0, 0].item() == pytest.approx(expected, rel=1e-6)
    four = pro_loss(torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.long))[1]
    assert four["beta"] == pytest.approx(0.45)


def test_bad_inputs_rejected():
    lp = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="non-increasing"):
        pro_loss(lp, torch.ones(1, 3, dtype=torch.long), torch.tensor([[0.0, 1.0, 0.5]]))
    with pytest.raises(ValueError, match="padding"):
        pro_loss(lp, torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        pro_loss(lp, torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sft_weight_beta"):
        pro_loss(lp, torch.ones(1, 3, dtype=torch.long), sft_weight_beta=-0.1)
