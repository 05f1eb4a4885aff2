"""RLHF's Bradley-Terry reward model: pairs from records on one query, learns a toy preference."""

from __future__ import annotations

import pytest

from tests.helpers.behavior_toy import KEYWORD, toy_record, toy_records
from trainer.reward_models.encoder import EncoderConfig
from trainer.reward_models.pairwise import PairwiseConfig, build_pairs, train_pairwise_rm

# two of MiniLM's six layers and one epoch learn the keyword; keeps the test fast on busy cores
FAST = PairwiseConfig(encoder=EncoderConfig(num_layers=2), epochs=1, lr=3e-4)


def test_pairs_share_a_query_and_follow_shaped_reward():
    records = [
        toy_record(0, "What is tea?", "tea a", liked=True, views=2),  # reward 1.5
        toy_record(1, "  what is TEA? ", "tea b", liked=False, views=4),  # same query, reward -0.5
        toy_record(2, "What is tea?", "tea c", liked=True, views=6),  # reward 0.5
        toy_record(3, "What is salt?", "salt a", liked=True),  # alone: no pair
    ]
    pairs = build_pairs(records)
    assert {(p.chosen, p.rejected) for p in pairs} == {("tea a", "tea b"), ("tea a", "tea c"), ("tea c", "tea b")}
    assert all(p.margin > 0 and p.query == "What is tea?" for p in pairs)
    assert len(build_pairs(records, min_margin=1.5)) == 1  # only tea a (1.5) vs tea b (-0.5)
    assert len(build_pairs(records, max_pairs_per_query=2)) == 2


def test_identical_answers_merge_instead_of_pairing_with_themselves():
    records = [toy_record(0, "q", "same", liked=True), toy_record(1, "q", "same", liked=False)]
    assert build_pairs(records) == []


def test_no_pairs_is_a_clear_error():
    records = [toy_record(i, f"query {i}", "a", liked=True) for i in range(3)]
    with pytest.raises(ValueError, match="two or more answers to the same query"):
        train_pairwise_rm(records, PairwiseConfig())


def test_learns_keyword_preference_on_held_out_pairs():
    model, metrics = train_pairwise_rm(toy_records(n_queries=40), FAST, seed=0)
    assert metrics["held_out_pairs"] == 8 and metrics["train_pairs"] == 32
    assert metrics["held_out_accuracy"] > 0.8, metrics
    liked = model.score(["Tell me about a volcano?"], [f"A volcano is like a {KEYWORD}."])
    other = model.score(["Tell me about a volcano?"], ["A volcano is what it is."])
    assert liked.item() > other.item()
