"""SFT: selection of the top-rewarded records, and a short run on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.behavior_toy import LIKED_TEXT, toy_record, toy_records
from tests.helpers.param_checks import assert_peft_checkpoint, assert_trained_only_trainable, snapshot
from trainer.algorithms import sft
from trainer.algorithms.base import TrainingDiverged, TrainRequest

STEPS = 3


def records_with_rewards(rewards: list[float], query_of=lambda i: f"query {i}"):
    return [toy_record(i, query_of(i), f"answer {i}", liked=True).model_copy(update={"reward": r})
            for i, r in enumerate(rewards)]  # fmt: skip


def test_selects_only_the_top_rewarded_records():
    records = records_with_rewards([0.5, -0.2, 0.9, 0.0, 0.7, 0.1, 0.3, -1.0, 0.8, 0.2])
    chosen = sft.select_top(records, top_fraction=0.3, min_reward=0.0)
    assert [r.reward for r in chosen] == [0.9, 0.8, 0.7]  # best first, 30% of 10 records
    assert sft.select_top(records, top_fraction=1.0, min_reward=0.0)[-1].reward == 0.1  # 0.0 and below never
    assert [r.reward for r in sft.select_top(records, 1.0, min_reward=0.6)] == [0.9, 0.8, 0.7]


def test_per_query_keeps_the_best_answer_and_duplicates_count_once():
    records = records_with_rewards([0.2, 0.9, 0.5, 0.4], query_of=lambda i: "same" if i < 3 else "other")
    records.append(records[1].model_copy(update={"impression_id": "dup"}))  # same answer logged twice
    assert [r.response for r in sft.select_top(records, 1.0, 0.0)] == ["answer 1", "answer 2", "answer 3", "answer 0"]
    assert [r.response for r in sft.select_top(records, 1.0, 0.0, per_query=True)] == ["answer 1", "answer 3"]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    request = TrainRequest(
        records=toy_records(12), model_path=str(tiny_model_dir), output_root=tmp_path_factory.mktemp("sft"),
        version_name="sft-1", steps=STEPS, progress=False,
    )  # fmt: skip
    config = sft.Config(top_fraction=0.25, batch_size=4, lora_r=4, learning_rate=3e-3, max_response_tokens=16,
                        threads=1)  # fmt: skip
    trainer = sft.SFTTrainer(request, config)
    modules = {"policy": trainer.policy.model}
    before = snapshot(modules)
    result = trainer.run()
    return trainer, modules, before, result


def test_trains_on_exactly_the_selection(finished):
    trainer, _, _, result = finished
    # 25% of 24 toy records: 6, all of them liked (reward > 0) keyword answers, best first
    assert len(trainer.examples) == 6
    assert all("banana" in answer for _, answer in trainer.examples)
    assert [answer for _, answer in trainer.examples] == [r.response for r in trainer.selected]
    assert {prompt.behavior for prompt, _ in trainer.examples} == {LIKED_TEXT}
    assert result.version.metrics["selected"] == 6


def test_run_trains_every_trainable_parameter_and_lowers_the_loss(finished):
    _, modules, before, result = finished
    assert_trained_only_trainable(before, modules)
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]


def test_run_writes_a_loadable_peft_checkpoint_with_metadata(finished, tiny_model_dir):
    trainer, _, _, result = finished
    assert_peft_checkpoint(result, tiny_model_dir, trainer.policy.model, "sft", STEPS)


def test_nothing_to_imitate_is_a_clear_error(tiny_model_dir, tmp_path):
    records = records_with_rewards([0.0, -0.5, -0.1])
    request = TrainRequest(records=records, model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v")
    with pytest.raises(ValueError, match="nothing to imitate"):
        sft.run(request, sft.Config())
    with pytest.raises(ValueError, match="top_fraction"):
        sft.Config(top_fraction=0)


def small_trainer(model_dir, out, seed=0, steps=2) -> sft.SFTTrainer:
    request = TrainRequest(
        records=toy_records(8), model_path=str(model_dir), output_root=out, version_name="v", seed=seed,
        steps=steps, progress=False,
    )  # fmt: skip
    return sft.SFTTrainer(request, sft.Config(batch_size=2, lora_r=4, max_response_tokens=8, threads=1))


def test_a_nan_loss_stops_the_run_without_a_checkpoint(tiny_model_dir, tmp_path):
    trainer = small_trainer(tiny_model_dir, tmp_path)
    lora_b = next(p for n, p in trainer.policy.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="SFT loss became nan"):
        trainer.run()
    assert list(tmp_path.iterdir()) == []  # no version, no half-written temp folder


def test_runs_are_deterministic_under_a_seed(tiny_model_dir, tmp_path):
    weights = []
    for run in range(2):
        trainer = small_trainer(tiny_model_dir, tmp_path / str(run), seed=3)
        losses = [trainer.iteration(i)["loss"] for i in range(2)]
        weights.append((losses, {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}))
    (l1, w1), (l2, w2) = weights
    assert l1 == l2 and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_nan_reward_is_refused_by_name():
    records = records_with_rewards([0.5, float("nan")])
    with pytest.raises(ValueError, match="'imp-1' has reward nan"):
        sft.select_top(records, 1.0, 0.0)
