"""PRO: ranked lists from records, self-bootstrapping insertion, and short runs on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.behavior_toy import LIKED_TEXT, toy_record, toy_records
from tests.helpers.param_checks import assert_peft_checkpoint, assert_trained_only_trainable, snapshot
from trainer.algorithms import pro
from trainer.algorithms.base import TrainRequest
from trainer.rollouts import Prompt

QUERY = "Tell me about the sea?"
RANKED = ["The sea is large and blue.", "The sea is wet.", "Sea sea sea sea."]  # best first


def ranked_records() -> list:
    return [
        toy_record(i, QUERY, answer, liked=True).model_copy(update={"reward": reward})
        for i, (answer, reward) in enumerate(zip(RANKED, [0.9, 0.1, -0.8], strict=True))
    ]


def small_config(**overrides) -> pro.Config:
    base = dict(batch_size=4, lora_r=4, learning_rate=3e-3, max_response_tokens=16, threads=1)
    base.update(overrides)
    return pro.Config(**base)


def test_lists_rank_answers_to_one_query_by_shaped_reward():
    records = ranked_records()[::-1] + [
        toy_record(10, "  tell me about THE SEA? ", RANKED[0], liked=True).model_copy(update={"reward": 0.5}),
        toy_record(11, "alone", "only answer", liked=True),
        toy_record(12, "tie", "a", liked=True),
        toy_record(13, "tie", "b", liked=True),
    ]
    lists = pro.build_lists(records, max_list_len=4, behavior=lambda r: "b")
    assert len(lists) == 1  # single answers and all-tie lists carry no ranking
    assert lists[0].answers == RANKED and lists[0].prompt == Prompt(QUERY, "b")
    assert lists[0].rewards == pytest.approx([0.7, 0.1, -0.8])  # the duplicate answer's rewards are averaged
    short = pro.build_lists(records, max_list_len=2, behavior=lambda r: "")[0]
    assert short.answers == [RANKED[0], RANKED[2]]  # the best and the worst survive truncation
    assert len(pro.build_lists(records, 4, lambda r: "", min_len=1)) == 2  # with bootstrapping: singles too


def test_bootstrapped_answers_never_take_the_top_and_rewards_stay_sorted():
    logged = pro.RankedList(Prompt(QUERY, ""), ["best", "worst"], [0.9, -0.8], [False, False])
    merged = pro.insert_bootstrapped(logged, [0.2, 0.5], ["great sample", "poor sample"], [0.99, 0.3])
    # RM scores: best 0.2, worst 0.5 (the RM disagrees with users), samples 0.99 and 0.3
    assert merged.answers == ["best", "great sample", "worst", "poor sample"]
    assert merged.generated == [False, True, False, True]
    assert merged.rewards == sorted(merged.rewards, reverse=True) == [0.99, 0.5, 0.3, 0.2]


def mean_logprobs(trainer: pro.PROTrainer) -> torch.Tensor:
    with torch.no_grad():
        summed, lengths = trainer.list_scores([trainer.lists[0]])
    return (summed / lengths)[0]  # (L,)


@pytest.mark.parametrize("temperature", ["dynamic", "constant"])
def test_pro_raises_the_best_candidate_relative_to_the_worst(tiny_model_dir, tmp_path, temperature):
    request = TrainRequest(
        records=ranked_records(), model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v", steps=5,
        progress=False,
    )  # fmt: skip
    # sft_weight=0: the ranking term alone (eq. 5-6/8-11), without the SFT pull on the best answer
    trainer = pro.PROTrainer(request, small_config(temperature=temperature, batch_size=1, sft_weight=0.0))
    before = mean_logprobs(trainer)
    for i in range(request.steps):
        trainer.iteration(i)
    after = mean_logprobs(trainer)
    assert (after[0] - after[2]) > (before[0] - before[2]) + 0.5, (before, after)
    assert (after[1] - after[2]) > (before[1] - before[2]) + 0.3, (before, after)  # the second stage, y2 > y3


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    request = TrainRequest(
        records=toy_records(12), model_path=str(tiny_model_dir), output_root=tmp_path_factory.mktemp("pro"),
        version_name="pro-1", steps=2, progress=False,
    )  # fmt: skip
    trainer = pro.PROTrainer(request, small_config())
    modules = {"policy": trainer.policy.model}
    before = snapshot(modules)
    result = trainer.run()
    return trainer, modules, before, result


def test_run_trains_every_trainable_parameter_and_no_frozen_one(finished):
    trainer, modules, before, _ = finished
    assert_trained_only_trainable(before, modules)
    assert {lst.prompt.behavior for lst in trainer.lists} == {LIKED_TEXT}  # the serving sentence


def test_run_writes_a_loadable_peft_checkpoint_with_metadata(finished, tiny_model_dir):
    trainer, _, _, result = finished
    assert_peft_checkpoint(result, tiny_model_dir, trainer.policy.model, "pro", 2)
    meta = result.version.metrics
    assert meta["lists"] == 12 and meta["list_len"] == 2
    assert meta["beta"] == pytest.approx(0.05 * (2 - 1) ** 2)  # the paper's 0.05 (l - 1)^2


def test_self_bootstrapping_adds_scored_samples_below_the_logged_best(tiny_model_dir, tmp_path):
    liked_only = [r for r in toy_records(8) if r.reward > 0]  # one answer per query: no list without samples
    request = TrainRequest(
        records=liked_only, model_path=str(tiny_model_dir), output_root=tmp_path, version_name="boot", steps=1,
        progress=False,
    )  # fmt: skip
    config = small_config(
        bootstrap=2, max_response_tokens=8, rm_backbone="base", rm_lora_r=4, rm_epochs=1, rm_heldout_fraction=0.25
    )
    result = pro.run(request, config)
    metrics = result.metrics[0]
    assert metrics["list_len"] == 3  # the logged answer + 2 samples
    assert metrics["bootstrap_position"] >= 1.0  # a sample never takes the top
    assert "rm_accuracy" in metrics and result.version.algorithm == "pro"


def test_errors_say_what_to_do(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="'preferred' or 'none'"):
        pro.Config(prompt_behavior="record")
    with pytest.raises(ValueError, match="temperature"):
        pro.Config(temperature="hot")
    single = [toy_record(i, f"query {i}", "answer", liked=True) for i in range(3)]
    request = TrainRequest(records=single, model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v")
    with pytest.raises(ValueError, match="bootstrap > 0"):
        pro.run(request, small_config())
