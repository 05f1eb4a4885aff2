"""Records loading with line-numbered errors, behavior swaps, and config validation."""

from __future__ import annotations

import json
import random

import pytest

from tests.helpers.toy_task import DISLIKED, LIKED, toy_record, toy_records
from trainer.config import ConfigError, PPOConfig, RLHBConfig
from trainer.records import (
    BehaviorPool,
    RecordsError,
    answer_swap_siblings,
    as_records,
    check_swappable,
    load_records,
    split_heldout,
)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_load_records_reads_jsonl_and_skips_blank_lines(tmp_path):
    records = toy_records(5)
    path = write_lines(
        tmp_path / "r.jsonl", [r.model_dump_json() for r in records[:2]] + [""] + [records[2].model_dump_json()]
    )
    assert load_records(path) == records[:3]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], r"r\.jsonl: no records \(the file is empty\)"),
        (["", "  "], r"no records"),
        (["{not json"], r"r\.jsonl:1: not valid JSON"),
        (["GOOD", "[1, 2]"], r"r\.jsonl:2: expected a JSON object"),
        (["GOOD", "GOOD", '{"query": "q"}'], r"r\.jsonl:3: impression_id: Field required"),
        (["BLANK_BEHAVIOR"], r"r\.jsonl:1: behavior_text is empty"),
    ],
)
def test_bad_records_files_name_the_line_and_the_problem(tmp_path, lines, message):
    good = toy_records(1)[0]
    blank = good.model_copy(update={"behavior_text": " "})
    lines = [{"GOOD": good.model_dump_json(), "BLANK_BEHAVIOR": blank.model_dump_json()}.get(x, x) for x in lines]
    with pytest.raises(RecordsError, match=message):
        load_records(write_lines(tmp_path / "r.jsonl", lines))


def test_missing_file_and_in_memory_records(tmp_path):
    with pytest.raises(RecordsError, match="no such records file"):
        load_records(tmp_path / "absent.jsonl")
    record = toy_records(1)[0]
    assert as_records([json.loads(record.model_dump_json()), record]) == [record, record]
    with pytest.raises(RecordsError, match="record 0: query: Field required"):
        as_records([{"impression_id": "x"}])


def test_swaps_differ_in_likes_or_dislikes_not_only_in_views():
    like_high = toy_record(0, "q", "a", liked=True)
    like_low = toy_record(1, "q", "b", liked=False)
    # same like/dislike levels as like_high, different view bucket and sentence: not a valid swap
    views_only = like_high.model_copy(
        update={"buckets": {**like_high.buckets, "view": 4}, "behavior_text": LIKED + " Users viewed it often."}
    )
    pool = BehaviorPool([like_high, like_low, views_only])
    assert pool.swap_candidates(LIKED) == [DISLIKED]
    assert pool.opposite(LIKED) == DISLIKED and pool.opposite(DISLIKED) in (LIKED, views_only.behavior_text)
    assert pool.most_preferred() in (LIKED, views_only.behavior_text) and pool.least_preferred() == DISLIKED
    rng = random.Random(0)
    assert all(pool.swap(LIKED, rng) == DISLIKED for _ in range(10))


def test_answer_swap_siblings_share_the_question_and_differ_in_preference():
    records = [
        toy_record(0, "Why is the sky blue?", "a", liked=True),
        toy_record(1, " why is the sky  blue?", "b", liked=False),  # the same question (case, spaces)
        toy_record(2, "Why is the sky blue?", "c", liked=True),  # same levels as 0: never its answer swap
        toy_record(3, "What is rain?", "d", liked=False),  # another question: never a sibling
        toy_record(4, "What is rain?", "e", liked=False),  # asked twice, both disliked: no sibling
    ]
    siblings = answer_swap_siblings(records, BehaviorPool(records))
    assert siblings == [[1], [0, 2], [1], [], []]


def test_preference_score_orders_sentences_and_the_contrast_mirror_only_points_down():
    liked, disliked = toy_record(0, "q", "a", liked=True), toy_record(1, "q", "b", liked=False)
    pool = BehaviorPool([liked, disliked])
    assert pool.preference_score(LIKED) > pool.preference_score(DISLIKED)
    assert pool.preference_score(pool.most_preferred()) >= pool.preference_score(LIKED)
    # "preferred" contrast records: a liked sentence contrasts with its mirror, a disliked one with nothing
    assert pool.opposite_below(LIKED) == DISLIKED and pool.opposite_below(DISLIKED) is None
    assert pool.opposite_below("never logged") is None


def test_paper_bucket_keys_are_recognized():
    """Records from the paper encoding use "like"/"dislike" keys, rates use "like_rate"/"dislike_rate"."""
    a = toy_record(0, "q", "a", liked=True).model_copy(update={"buckets": {"view": 2, "like": 4, "dislike": 0}})
    b = a.model_copy(update={"buckets": {"view": 2, "like": 0, "dislike": 3}, "behavior_text": "other"})
    assert BehaviorPool([a, b]).swap_candidates(a.behavior_text) == ["other"]


def test_records_that_cannot_be_swapped_are_refused():
    liked_only = [toy_record(i, "q", "good a", liked=True) for i in range(5)]
    with pytest.raises(RecordsError, match="same like/dislike levels"):
        check_swappable(liked_only)


def test_heldout_split_is_seeded_and_disjoint():
    records = toy_records(40)
    # Several answers per query: a split by record would put one query on both sides.
    records = [r.model_copy(update={"impression_id": f"{r.impression_id}-{k}"}) for r in records for k in range(3)]
    train, held = split_heldout(records, 0.2, 64, seed=3)
    assert len(train) + len(held) == len(records) and 0.15 <= len(held) / len(records) <= 0.25
    assert {r.query.lower() for r in train}.isdisjoint(r.query.lower() for r in held)
    assert split_heldout(records, 0.2, 64, seed=3) == (train, held)
    assert split_heldout(records, 0.2, 64, seed=4) != (train, held)
    assert len(split_heldout(records, 0.5, 10, seed=0)[1]) <= 10  # the cap holds with whole queries
    with pytest.raises(RecordsError, match="too few"):
        split_heldout([r for r in records if r.query == records[0].query], 0.5, 64, seed=0)  # one query only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"batch_size": 15},
            r"batch_size \(15\) must be a positive multiple .*: e\.g\. batch_size=12",
        ),
        ({"clip_range": 0}, r"clip_range must be in \(0, 1\)"),
        ({"kl_estimator": "k9"}, r"kl_estimator must be one of"),
        ({"kl_placement": "both"}, r"kl_placement must be one of \('reward', 'loss'\)"),
        ({"kl_placement": "loss"}, r"kl_placement=\"loss\" needs kl_estimator in \('k2', 'k3'\); got 'k1'"),
        ({"minibatch_size": 99}, r"minibatch_size \(99\) must divide batch_size \(16\) .*: one of \[1, 2, 4, 8, 16\]"),
        ({"minibatch_size": 6}, r"minibatch_size \(6\) must divide batch_size \(16\)"),
        ({"num_minibatches": 3}, r"num_minibatches \(3\) must divide batch_size \(16\): one of \[1, 2, 4, 8, 16\]"),
        ({"ppo_epochs": 0}, r"ppo_epochs must be >= 1"),
        ({"target_kl": 0.0}, r"target_kl must be > 0 or None"),
        ({"kl_target": -1.0}, r"kl_target must be > 0"),
        ({"kl_horizon": 8}, r"kl_horizon \(8\) must be >= batch_size \(16\)"),
        ({"learning_rate": 3.0}, r"learning_rate must be in \(0, 1\)"),
        ({"kappa": 0.6, "swap_share": 0.5}, r"swap_share \(0\.5\) \+ kappa \(0\.6\) \+ d_truncated_share \(0\.0\)"),
        ({"kappa": 0.2, "swap_share": 0.5, "d_truncated_share": 0.4}, r"\+ d_truncated_share \(0\.4\) must be <= 1"),
        ({"d_truncated_max_words": -1}, r"d_truncated_max_words must be >= 0"),
        ({"missing_eos_penalty": -1.0}, r"missing_eos_penalty must be >= 0"),
        ({"short_answer_penalty": -1.0}, r"short_answer_penalty must be >= 0"),
        ({"repeated_ngram_penalty": -1.0}, r"repeated_ngram_penalty must be >= 0"),
        ({"short_answer_words": 0}, r"short_answer_words must be >= 1"),
        ({"d_truncated_cut": "tail"}, r"d_truncated_cut must be one of \('head', 'mid_sentence'\)"),
        ({"reward_realness_weight": -1.0}, r"reward_realness_weight must be >= 0"),
        ({"reward_realness_weight": 1.0, "reward": "log_d"}, r"adds log D to the contrast; with reward='log_d'"),
        ({"kappa_source": "best"}, r"kappa_source must be one of"),
        ({"d_label_smoothing": 0.5}, r"d_label_smoothing must be in"),
        ({"d_max_acc": 0.5}, r"d_max_acc must be in"),
        ({"preferred_prompt_share": 1.5}, r"preferred_prompt_share must be in \[0, 1\]"),
        ({"discriminator": "bert"}, r"discriminator must be one of"),
        ({"reward": "raw"}, r"reward must be one of"),
        ({"d_frozen": True}, r"d_frozen=True with d_warmup_steps=0 .* set d_warmup_steps > 0"),
        ({"chance_margin": 0.5}, r"chance_margin must be in"),
    ],
)
def test_config_rejects_bad_values_with_what_to_do(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RLHBConfig(**kwargs)


def test_config_defaults_follow_the_paper():
    config = RLHBConfig()
    assert config.rollouts_per_prompt == 4 and config.batch_size == 16 and config.prompts_per_batch == 4
    assert RLHBConfig(d_frozen=True, d_warmup_steps=5).d_frozen
    assert PPOConfig(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == ("q_proj", "v_proj")


def test_ppo_defaults_make_the_clip_act():
    """Several epochs over several minibatches (CleanRL/TRL): with 1 x 1 the ratio is always 1."""
    config = PPOConfig()
    assert config.ppo_epochs > 1 and config.effective_minibatch < config.batch_size
    assert config.batch_size % config.effective_minibatch == 0
    assert PPOConfig(minibatch_size=8).effective_minibatch == 8  # an explicit size wins over num_minibatches
    assert PPOConfig(batch_size=8, rollouts_per_prompt=4).effective_minibatch == 4  # scales with the batch
    assert config.target_kl is None and not config.adaptive_kl  # both off by default
