"""RLHF: Bradley-Terry reward model on pairs of records, then PPO; then RLHB from its adapter
(the paper's "RLHF + RLHB" chaining)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.behavior_toy import toy_record, toy_records
from tests.helpers.param_checks import assert_peft_checkpoint, assert_trained_only_trainable, snapshot
from trainer.algorithms import rlhb, rlhf
from trainer.algorithms.base import TrainRequest
from trainer.checkpoints import read_metadata

STEPS = 1


def small_config(**overrides) -> rlhf.Config:
    base = dict(
        batch_size=8, rollouts_per_prompt=4, max_new_tokens=8, minibatch_size=4,  # 2 actor steps: LoRA A moves too
        lora_r=4, value_head_hidden=16, threads=1,
        rm_backbone="base", rm_lora_r=4, rm_epochs=1, rm_batch_size=4, rm_learning_rate=1e-3,
    )  # fmt: skip
    base.update(overrides)
    return rlhf.Config(**base)


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhf")
    request = TrainRequest(
        records=toy_records(12), model_path=str(tiny_model_dir), output_root=out, version_name="rlhf-1",
        steps=STEPS, progress=False,
    )  # fmt: skip
    trainer = rlhf.build(request, small_config())
    modules = {"policy": trainer.policy.model, "value_head": trainer.policy.value_head}
    before = snapshot(modules)
    result = trainer.run(rlhf.ALGORITHM)
    return trainer, modules, before, result, out


def test_run_trains_every_trainable_parameter_and_no_frozen_one(finished):
    _, modules, before, _, _ = finished
    assert_trained_only_trainable(before, modules)


def test_run_writes_a_loadable_peft_checkpoint_with_metadata(finished, tiny_model_dir):
    trainer, _, _, result, _ = finished
    assert_peft_checkpoint(result, tiny_model_dir, trainer.policy.model, "rlhf", STEPS)
    meta = result.version.metrics
    assert 0.0 <= meta["rm_win_rate"] <= 1.0 and 0.0 <= meta["rm_held_out_accuracy"] <= 1.0
    assert meta["rm_train_pairs"] + meta["rm_held_out_pairs"] == 12  # one pair per toy query
    for key in ("mean_score", "kl", "value_loss", "policy_loss", "rm_reward", "clipfrac", "approx_kl", "kl_coef"):
        assert math.isfinite(meta[key]), key
    for key in ("old_approx_kl", "value_clipfrac", "explained_var", "entropy", "ppo_updates"):
        assert key in meta, key  # PPO's per-iteration metrics, as in RLHB


def test_win_rate_compares_rollouts_with_the_logged_answers(finished):
    trainer, _, _, _, _ = finished
    query = "Tell me about rain?"
    logged = [r.response for r in toy_records(12) if r.query == query]
    baseline = trainer.reward_model.score([query] * 2, logged).mean().item()
    assert trainer.baseline["tell me about rain?"] == pytest.approx(baseline, abs=1e-6)
    scores = trainer.score([query] * 4, ["a", "b", "c", "d"], [""] * 4)
    assert trainer._win_rate == pytest.approx((scores > baseline).float().mean().item())


def test_rlhb_chains_from_the_rlhf_adapter(finished, tiny_model_dir):
    """RLHF then RLHB: the child starts from the parent's adapter and value head, and its
    metadata names the parent."""
    trainer, _, _, parent_result, out = finished
    parent = parent_result.version
    request = TrainRequest(
        records=toy_records(12), model_path=str(tiny_model_dir), output_root=out, version_name="rlhb-on-rlhf",
        parent=parent, steps=1, progress=False,
    )  # fmt: skip
    config = rlhb.Config(
        batch_size=4, rollouts_per_prompt=4, max_new_tokens=4, lora_r=4, value_head_hidden=16, threads=1,
        discriminator="lm", d_lora_r=4, d_batch_size=4, heldout_max=4,
    )  # fmt: skip
    child = rlhb.RLHBTrainer(request, config)
    from peft.utils import get_peft_model_state_dict

    start, trained = get_peft_model_state_dict(child.policy.model), get_peft_model_state_dict(trainer.policy.model)
    assert start.keys() == trained.keys() and all(torch.equal(start[k], trained[k]) for k in start)
    for a, b in zip(child.policy.value_head.parameters(), trainer.policy.value_head.parameters(), strict=True):
        assert torch.equal(a, b)
    result = child.run()
    meta = read_metadata(result.checkpoint)
    assert meta.parent == "rlhf-1" and meta.algorithm == "rlhb"
    assert meta.id > parent.id


def test_records_without_pairs_are_a_clear_error(tiny_model_dir, tmp_path):
    records = [toy_record(i, f"query {i}", "an answer", liked=i % 2 == 0) for i in range(6)]
    request = TrainRequest(records=records, model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v")
    with pytest.raises(ValueError, match="same query.*use rlhbc"):
        rlhf.run(request, small_config())
    assert not (tmp_path / "v").exists()
