"""RLHBC: behavior classifier as the reward model, then PPO on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers.behavior_toy import toy_records
from tests.helpers.param_checks import assert_peft_checkpoint, assert_trained_only_trainable, snapshot
from trainer.algorithms import rlhbc
from trainer.algorithms.base import TrainRequest

STEPS = 1


def small_config(**overrides) -> rlhbc.Config:
    base = dict(
        batch_size=8, rollouts_per_prompt=4, max_new_tokens=8, minibatch_size=4,  # 2 actor steps: LoRA A moves too
        lora_r=4, value_head_hidden=16, threads=1,
        rm_backbone="base", rm_lora_r=4, rm_epochs=1, rm_batch_size=8, rm_learning_rate=1e-3,
    )  # fmt: skip
    base.update(overrides)
    return rlhbc.Config(**base)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhbc")
    request = TrainRequest(
        records=toy_records(12), model_path=str(tiny_model_dir), output_root=out / "versions",
        version_name="rlhbc-1", metrics_path=out / "metrics.jsonl", steps=STEPS, progress=False,
    )  # fmt: skip
    trainer = rlhbc.build(request, small_config())
    modules = {"policy": trainer.policy.model, "value_head": trainer.policy.value_head}
    before = snapshot(modules)
    result = trainer.run(rlhbc.ALGORITHM)
    return trainer, modules, before, result, out


def test_run_trains_every_trainable_parameter_and_no_frozen_one(finished):
    _, modules, before, _, _ = finished
    assert_trained_only_trainable(before, modules)


def test_run_writes_a_loadable_peft_checkpoint_with_metadata(finished, tiny_model_dir):
    trainer, _, _, result, out = finished
    assert_peft_checkpoint(result, tiny_model_dir, trainer.policy.model, "rlhbc", STEPS)
    assert (result.checkpoint / "trainer_state" / "value_head.safetensors").is_file()
    meta = result.version.metrics
    assert 0.0 <= meta["rm_win_rate"] <= 1.0
    assert 0.0 <= meta["rm_accuracy"] <= 1.0 and meta["rm_held_out_records"] > 0
    for key in ("mean_score", "kl", "value_loss", "policy_loss", "rm_reward", "clipfrac", "approx_kl", "kl_coef"):
        assert math.isfinite(meta[key]), key
    for key in ("old_approx_kl", "value_clipfrac", "explained_var", "entropy", "ppo_updates"):
        assert key in meta, key  # PPO's per-iteration metrics, as in RLHB
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and rows[0]["rm_win_rate"] == meta["rm_win_rate"]


def test_ppo_reward_is_the_classifier_reward(finished):
    trainer, _, _, _, _ = finished
    queries, answers = ["Tell me about rain?"] * 2, ["rain is like a banana.", "rain is what it is."]
    scores = trainer.score(queries, answers, ["", ""])
    assert torch.equal(scores, trainer.reward_model.score(queries, answers))
    assert ((scores >= -1) & (scores <= 1)).all()
    # prompts carry the most preferred logged sentence, as the server sends by default
    assert {p.behavior for p in trainer.prompts()} == {
        "Users liked this answer at a high rate and disliked it at a low rate."
    }


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="prompt_behavior"):
        rlhbc.Config(prompt_behavior="sometimes")
    with pytest.raises(ValueError, match="backbone"):
        rlhbc.Config(rm_backbone="bert")
    with pytest.raises(ValueError, match="head_weights"):
        rlhbc.Config(head_weights={"like": -1.0})
    with pytest.raises(ValueError, match="batch_size"):
        rlhbc.Config(batch_size=6, rollouts_per_prompt=4)


def test_empty_records_are_a_clear_error(tiny_model_dir, tmp_path):
    request = TrainRequest(records=[], model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v")
    with pytest.raises(ValueError, match="no records"):
        rlhbc.run(request, small_config())
    assert not (tmp_path / "v").exists()
