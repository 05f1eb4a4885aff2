"""Multi-head behavior classifier (eq. 1) and the scalar reward read from it."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.classifier import classifier_reward, expected_bucket, multihead_ce


def reference_ce(logits, targets, weights=None, ignore=-100):
    batch, heads, _ = len(logits), len(logits[0]), len(logits[0][0])
    per_head = []
    for h in range(heads):
        terms = []
        for i in range(batch):
            if targets[i][h] == ignore:
                continue
            row = logits[i][h]
            log_z = math.log(sum(math.exp(v) for v in row))
            terms.append(-(row[targets[i][h]] - log_z))  # eq. 1 with one-hot b
        per_head.append(sum(terms) / len(terms) if terms else 0.0)
    weights = weights or [1.0] * heads
    return sum(w * v for w, v in zip(weights, per_head, strict=True)) / sum(weights)


def test_uniform_logits_give_log_num_classes():
    loss = multihead_ce(torch.zeros(3, 4, 5), torch.randint(0, 5, (3, 4)))
    assert loss.item() == pytest.approx(math.log(5))


def test_matches_reference_loop_with_weights_and_ignored_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 4, (6, 3), generator=gen)
    targets[1, 2] = -100
    targets[4, 0] = -100
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got = multihead_ce(logits, targets)
    assert got.item() == pytest.approx(reference_ce(logits.tolist(), targets.tolist()), abs=1e-12)
    got_w = multihead_ce(logits, targets, head_weights=weights)
    assert got_w.item() == pytest.approx(reference_ce(logits.tolist(), targets.tolist(), weights.tolist()), abs=1e-12)
    # an ignored target's logits are irrelevant
    logits2 = logits.clone()
    logits2[1, 2] = 100.0
    assert multihead_ce(logits2, targets).item() == pytest.approx(got.item(), abs=1e-12)


def test_gradient_raises_the_target_class():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    multihead_ce(logits, torch.tensor([[2, 0]])).backward()
    assert logits.grad[0, 0, 2] < 0 and logits.grad[0, 0, 0] > 0
    assert logits.grad[0, 1, 0] < 0 and logits.grad[0, 1, 2] > 0


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match=r"\(B, H, C\)"):
        multihead_ce(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="head_weights"):
        multihead_ce(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2))


def test_expected_bucket():
    logits = torch.full((1, 3, 5), -1e4)
    logits[0, 0, 4] = 0.0  # surely top bucket
    logits[0, 1, 0] = 0.0  # surely bottom bucket
    logits[0, 2] = 0.0  # uniform: mean bucket 2
    torch.testing.assert_close(expected_bucket(logits), torch.tensor([[4.0, 0.0, 2.0]]))


def confident(buckets: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.full((1, len(buckets), num_classes), -1e4)
    for h, c in enumerate(buckets):
        logits[0, h, c] = 0.0
    return logits


def test_classifier_reward_direction_and_range():
    positive = torch.tensor([True, True, True, False])  # pv, clicks, likes, dislikes
    best = classifier_reward(confident([4, 4, 4, 0], 5), positive, 5)
    worst = classifier_reward(confident([0, 0, 0, 4], 5), positive, 5)
    middle = classifier_reward(torch.zeros(1, 4, 5), positive, 5)
    assert best.item() == pytest.approx(1.0) and worst.item() == pytest.approx(-1.0)
    assert middle.item() == pytest.approx(0.0, abs=1e-6)
    more_dislikes = classifier_reward(confident([4, 4, 4, 2], 5), positive, 5)
    assert more_dislikes.item() < best.item()
    # only likes and dislikes count: exposure (pv, clicks) weighted out
    weights = torch.tensor([0.0, 0.0, 1.0, 1.0])
    content_only = classifier_reward(confident([0, 0, 4, 0], 5), positive, 5, head_weights=weights)
    assert content_only.item() == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(1)
    rewards = classifier_reward(torch.randn(32, 4, 5, generator=gen) * 5, positive, 5)
    assert rewards.shape == (32,) and (rewards.abs() <= 1).all()


def test_classifier_reward_detached_and_checked():
    logits = torch.zeros(2, 2, 3, requires_grad=True)
    assert not classifier_reward(logits, torch.tensor([True, False]), 3).requires_grad
    with pytest.raises(ValueError, match="num_classes"):
        classifier_reward(logits, torch.tensor([True, False]), 4)
    with pytest.raises(ValueError, match="positive_heads_mask"):
        classifier_reward(logits, torch.tensor([True]), 3)
