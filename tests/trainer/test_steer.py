"""Behavior-conditioned SFT before PPO (``trainer.algorithms.steer``, ``RLHBConfig.steer_steps``):
after it the policy's answers depend on the behavior sentence the way the records say."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tests.helpers.toy_task import DISLIKED, LIKED, toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer
from trainer.algorithms.steer import steer


def make_trainer(model_dir, tmp_path, n_records: int = 48, **overrides) -> RLHBTrainer:
    request = TrainRequest(
        records=toy_records(n_records), model_path=str(model_dir), output_root=tmp_path, version_name="v", steps=1,
        progress=False,
    )  # fmt: skip
    config = Config(
        batch_size=8, rollouts_per_prompt=2, max_new_tokens=4, d_batch_size=4, heldout_max=8, lora_r=4, threads=1,
        value_head_hidden=16, **overrides,
    )  # fmt: skip
    return RLHBTrainer(request, config)


def test_steering_imitates_every_record_under_its_own_sentence(tiny_model_dir, tmp_path):
    """Liked and disliked records alike, each with the sentence it was logged under (SteerLM), and the
    loss falls. Whether the sentence then changes the answers is measured on SmolLM2 in
    bench/demo_experiments.md (E10): a random 2-layer model cannot learn it in a test's time."""
    trainer = make_trainer(tiny_model_dir, tmp_path)
    seen: list[tuple[str, str, str]] = []
    encode = trainer.policy.encode_pairs

    def recording_encode(prompts, answers):
        seen.extend((p.query, p.behavior, a) for p, a in zip(prompts, answers, strict=True))
        return encode(prompts, answers)

    trainer.policy.encode_pairs = recording_encode
    records = trainer.train_records
    steps = -(-len(records) // 8)  # one pass
    history = steer(trainer.policy, records, steps=steps * 4, learning_rate=1e-2, batch_size=8, rng=random.Random(0))
    assert len(history) == steps * 4
    assert set(seen) == {(r.query, r.behavior_text, r.response) for r in records}
    assert {b for _, b, _ in seen} == {LIKED, DISLIKED}
    first, last = history[0]["steer_loss"], sum(h["steer_loss"] for h in history[-steps:]) / steps
    assert last < first - 0.1, (first, last)  # it fits the records


def test_rlhb_warmup_runs_the_steer_steps_and_reports_them(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, steer_steps=3, steer_learning_rate=1e-3, d_warmup_steps=1)
    lora = [p.detach().clone() for p in trainer.policy.actor_parameters()]
    trainer.warmup()
    assert any(not torch.equal(a, p) for a, p in zip(lora, trainer.policy.actor_parameters(), strict=True))
    metrics = trainer.iteration(0)
    assert metrics["steer_steps"] == 3
    assert metrics["steer_loss_first"] > 0 and metrics["d_warmup_steps"] == 1


def test_no_steer_steps_leave_the_policy_untouched(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    lora = [p.detach().clone() for p in trainer.policy.actor_parameters()]
    state = trainer.rng.getstate()
    trainer.warmup()
    assert all(torch.equal(a, p) for a, p in zip(lora, trainer.policy.actor_parameters(), strict=True))
    assert trainer.rng.getstate() == state  # the paper's default run draws the same batches as before


def test_steer_settings_are_validated():
    with pytest.raises(ValueError, match="steer_steps must be >= 0"):
        Config(steer_steps=-1)
    with pytest.raises(ValueError, match="steer_learning_rate"):
        Config(steer_learning_rate=2.0)
    with pytest.raises(ValueError, match="steer_contrast_records must be 'all' or 'preferred'"):
        Config(steer_contrast_records="liked")


def test_preferred_contrast_records_push_nothing_down_under_the_served_side(tiny_model_dir, tmp_path):
    """steer_contrast_records="preferred": in the warm-up only liked-sentence records are also scored
    under their mirror, so no answer is ever pushed down under the more preferred sentence."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for side in ("all", "preferred"):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / side, n_records=16, steer_steps=2, steer_batch_size=16, d_warmup_steps=0,
            steer_contrast_records=side,
        )  # fmt: skip
        encode, seen[side] = trainer.policy.encode_pairs, []

        def recording_encode(prompts, answers, _seen=seen[side], _encode=encode):
            _seen.extend((p.behavior, a) for p, a in zip(prompts, answers, strict=True))
            return _encode(prompts, answers)

        trainer.policy.encode_pairs = recording_encode
        trainer.warmup()
    logged = {r.response: r.behavior_text for r in trainer.train_records}
    mirrored = {side: {(b, a) for b, a in pairs if b != logged.get(a)} for side, pairs in seen.items()}
    assert {b for b, _ in mirrored["all"]} == {LIKED, DISLIKED}  # both directions
    assert mirrored["preferred"] and {b for b, _ in mirrored["preferred"]} == {DISLIKED}
    assert all(logged[a] == LIKED for _, a in mirrored["preferred"])  # only liked-sentence answers


def test_the_contrast_scores_each_answer_under_its_mirrored_sentence_too(tiny_model_dir, tmp_path):
    """With contrast_weight > 0 every answer is also scored under the mirror of its sentence (and
    only then); the loss is the NLL plus the contrast, which starts at log 2 (the sentence ignored).
    Whether that makes a real model follow the sentence: bench/demo_experiments.md E10, on SmolLM2."""
    trainer = make_trainer(tiny_model_dir, tmp_path)
    seen: list[tuple[str, str]] = []
    encode = trainer.policy.encode_pairs

    def recording_encode(prompts, answers):
        seen.extend((p.behavior, a) for p, a in zip(prompts, answers, strict=True))
        return encode(prompts, answers)

    trainer.policy.encode_pairs = recording_encode
    mirror = {LIKED: DISLIKED, DISLIKED: LIKED}
    records = trainer.train_records[:8]
    kwargs = dict(learning_rate=1e-3, batch_size=8, rng=random.Random(0), opposite=mirror.get)
    plain = steer(trainer.policy, records, steps=1, contrast_weight=0.0, **kwargs)
    assert set(seen) == {(r.behavior_text, r.response) for r in records} and plain[0]["steer_contrast"] == 0.0
    seen.clear()
    history = steer(trainer.policy, records, steps=1, contrast_weight=2.0, beta=0.1, **kwargs)
    assert set(seen) == {(b, r.response) for r in records for b in (r.behavior_text, mirror[r.behavior_text])}
    h = history[0]
    assert abs(h["steer_contrast"] - math.log(2)) < 0.01
    assert h["steer_loss"] == pytest.approx(h["steer_nll"] + 2.0 * h["steer_contrast"], rel=1e-5)
