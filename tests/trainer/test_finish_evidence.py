"""finish_priors="if_feedback_agrees": the records decide whether the finish priors apply to a round."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.toy_task import toy_record, toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer
from trainer.finish_evidence import MIN_RECORDS_PER_SIDE, finish_evidence

PRIORS = dict(
    missing_eos_penalty=1.0, d_truncated_share=0.25, d_truncated_cut="mid_sentence", reward_realness_weight=1.0
)


def records_where_finished_are(liked: bool, n: int = 40):
    """Half the answers end with a full stop; those are liked (``liked``) or disliked, the others the opposite."""
    out = []
    for i, r in enumerate(toy_records(n)):
        finished = i % 2 == 0
        out.append(toy_record(i, r.query, r.response + ("." if finished else ""), liked=finished == liked))
    return out


def test_finished_answers_rewarded_more_support_the_priors():
    evidence = finish_evidence(records_where_finished_are(liked=True))
    assert (evidence.finished, evidence.unfinished) == (20, 20)
    assert evidence.reward_finished > evidence.reward_unfinished
    assert evidence.supports_priors and evidence.p_value < 1e-6
    assert evidence.as_metrics()["finish_priors_on"] == 1.0


def test_inverted_feedback_turns_the_priors_off():
    evidence = finish_evidence(records_where_finished_are(liked=False))
    assert evidence.t < 0 and not evidence.supports_priors
    assert "finish priors off" in evidence.describe()


def test_no_evidence_keeps_the_priors_off():
    # every toy answer stops without a full stop: nothing to compare against
    evidence = finish_evidence(toy_records(40))
    assert evidence.finished == 0 and evidence.unfinished == 40
    assert math.isnan(evidence.t) and evidence.p_value == 1.0 and not evidence.supports_priors
    few = records_where_finished_are(liked=True, n=2 * (MIN_RECORDS_PER_SIDE - 1))
    assert not finish_evidence(few).supports_priors  # 7 a side: too few to test


@given(st.lists(st.tuples(st.booleans(), st.floats(-1, 1)), min_size=2 * MIN_RECORDS_PER_SIDE, max_size=60))
def test_negating_every_reward_negates_t(rows):
    records = [
        toy_record(i, "q", "answer." if finished else "answer", liked=True).model_copy(update={"reward": reward})
        for i, (finished, reward) in enumerate(rows)
    ]
    flipped = [r.model_copy(update={"reward": -r.reward}) for r in records]
    t, t_flipped = finish_evidence(records).t, finish_evidence(flipped).t
    assert (math.isnan(t) and math.isnan(t_flipped)) or t == pytest.approx(-t_flipped)


def trainer_on(records, model_dir, tmp_path, **overrides) -> RLHBTrainer:
    request = TrainRequest(
        records=records, model_path=str(model_dir), output_root=tmp_path, version_name="v", steps=1, progress=False
    )
    config = Config(
        batch_size=4, rollouts_per_prompt=2, max_new_tokens=4, d_batch_size=4, heldout_max=8, lora_r=4,
        threads=1, value_head_hidden=16, **PRIORS, **overrides,
    )  # fmt: skip
    return RLHBTrainer(request, config)


def test_trainer_drops_the_priors_the_records_contradict_and_reports_why(tiny_model_dir, tmp_path):
    trainer = trainer_on(
        records_where_finished_are(liked=False), tiny_model_dir, tmp_path, finish_priors="if_feedback_agrees"
    )
    cfg = trainer.config
    assert (cfg.missing_eos_penalty, cfg.d_truncated_share, cfg.reward_realness_weight) == (0.0, 0.0, 0.0)
    assert trainer.core.config.missing_eos_penalty == 0.0  # PPO's scores are built from the decided config
    row = trainer.iteration(0)
    assert row["finish_priors_on"] == 0.0 and row["finish_t"] < 0 and row["missing_eos_share"] >= 0
    assert "finish_priors_on" not in trainer.iteration(1)  # reported once, with the first row


def test_trainer_keeps_the_priors_the_records_support(tiny_model_dir, tmp_path):
    trainer = trainer_on(
        records_where_finished_are(liked=True), tiny_model_dir, tmp_path, finish_priors="if_feedback_agrees"
    )
    cfg = trainer.config
    assert (cfg.missing_eos_penalty, cfg.d_truncated_share, cfg.reward_realness_weight) == (1.0, 0.25, 1.0)
    assert trainer.finish_metrics["finish_priors_on"] == 1.0
    always = trainer_on(records_where_finished_are(liked=False), tiny_model_dir, tmp_path)  # the default: as set
    assert always.config.missing_eos_penalty == 1.0 and always.finish_metrics == {}
