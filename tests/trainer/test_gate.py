"""The publication gate on real LoRA adapters over the tiny model, with the real registry."""

from __future__ import annotations

import pytest

from core.registry import Registry, RegistryError
from schemas.adapters import AdapterStatus
from schemas.behavior import BehaviorRecord
from tests.helpers.adapter_factory import write_test_adapter, write_trained_adapter
from trainer.gate import GateConfig, evaluate, gate_and_publish, nonfinite_weights, ranking_accuracy

BEHAVIOR = "Users liked this answer at a high rate and disliked it at a low rate."
TOPICS = [
    "bake bread",
    "tie a knot",
    "plant tomatoes",
    "fix a bike",
    "learn chess",
    "brew tea",
    "paint a wall",
    "write a poem",
    "clean a pan",
    "fold a shirt",
    "train a dog",
    "change a tire",
]
GOOD = "Sure! First gather what you need, then follow three simple steps, for example: start small."
BAD = "no idea. whatever whatever whatever"
FAST = GateConfig(max_prompts=4, max_new_tokens=8, max_records=16, batch_size=8, threads=1)


def record(i: int, topic: str, good: bool) -> BehaviorRecord:
    return BehaviorRecord(
        impression_id=f"imp-{i}",
        query=f"How do I {topic}?",
        response=GOOD if good else BAD,
        behavior_prompt=BEHAVIOR,
        adapter_version="base",
        counts={"view": 4, "like": 3 if good else 0, "dislike": 0 if good else 2},
        buckets={},
        behavior_text="",
        reward=0.75 if good else -0.5,
    )


@pytest.fixture
def heldout():
    return [record(2 * i + g, t, bool(g)) for i, t in enumerate(TOPICS[6:]) for g in (0, 1)]


@pytest.fixture
def registry(tmp_path, redis_client, redis_prefix):
    return Registry(tmp_path / "adapters", redis_client, redis_prefix)


def test_ranking_accuracy_counts_pairs_and_ties():
    assert ranking_accuracy([1.0, 0.0], [2.0, 1.0], 0.1) == (1.0, 1)
    assert ranking_accuracy([1.0, 0.0], [1.0, 2.0], 0.1) == (0.0, 1)
    assert ranking_accuracy([1.0, 0.0, 0.05], [0.0, 0.0, 0.0], 0.1) == (0.5, 2)


def test_nan_weights_are_rejected_and_never_become_active(registry, tiny_model_dir, heldout):
    registry.register(write_test_adapter(tiny_model_dir, registry.root, "ok", seed=1, scale=0.01))
    registry.promote("ok")
    nan = registry.register(write_test_adapter(tiny_model_dir, registry.root, "nan", seed=2, nan=True))
    assert nonfinite_weights(registry.root / "nan")
    result = gate_and_publish(registry, nan, str(tiny_model_dir), heldout, FAST)
    assert not result.passed and "non-finite" in result.reason
    assert registry.active() == "ok"
    assert registry.get("nan").status == AdapterStatus.rejected and "non-finite" in registry.get("nan").reason
    assert (registry.root / "nan").exists()  # kept, for inspection
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote("nan")


def test_large_kl_candidate_is_rejected_small_one_published(registry, tiny_model_dir, heldout):
    far = registry.register(
        write_test_adapter(
            tiny_model_dir, registry.root, "far", seed=1, scale=2.0, target_modules=("q_proj", "v_proj", "lm_head")
        )
    )
    result = gate_and_publish(registry, far, str(tiny_model_dir), heldout, FAST)
    assert not result.passed and "KL" in result.reason and result.metrics["kl_token"] > FAST.kl_bound
    assert registry.active() == "base" and registry.get("far").status == AdapterStatus.rejected

    near = registry.register(write_test_adapter(tiny_model_dir, registry.root, "near", seed=2, scale=0.01))
    result = gate_and_publish(registry, near, str(tiny_model_dir), heldout, FAST)
    assert result.passed, result.reason
    assert result.metrics["kl_token"] < 0.01
    assert registry.active() == "near" and registry.get("near").status == AdapterStatus.published


def test_kl_is_bounded_per_round_from_the_parent_and_the_distance_to_the_base_is_reported(
    registry, tiny_model_dir, heldout
):
    far_modules = ("q_proj", "v_proj", "lm_head")
    parent = registry.register(write_test_adapter(tiny_model_dir, registry.root, "far", seed=1, scale=2.0,
                                                  target_modules=far_modules))  # fmt: skip
    registry.promote(parent.name)  # an earlier round already moved this far from the base
    # the next round's candidate: a small step from the parent (the same weights, a little more of them)
    step = registry.register(write_test_adapter(tiny_model_dir, registry.root, "step", seed=1, scale=2.02,
                                                target_modules=far_modules))  # fmt: skip

    from_parent = evaluate(
        step, parent, str(tiny_model_dir), heldout, FAST.model_copy(update={"behavior_guard": False})
    )
    assert from_parent.metrics["kl_from_parent"] == 1.0
    assert from_parent.metrics["kl_token"] < 0.05 < FAST.kl_bound < from_parent.metrics["kl_token_base"]
    assert "KL" not in from_parent.reason

    to_base = FAST.model_copy(update={"kl_reference": "base", "behavior_guard": False})
    from_base = evaluate(step, parent, str(tiny_model_dir), heldout, to_base)
    assert not from_base.passed and "KL to the base model" in from_base.reason
    assert from_base.metrics["kl_token"] == pytest.approx(from_parent.metrics["kl_token_base"], rel=1e-4)

    back = registry.register(write_test_adapter(tiny_model_dir, registry.root, "back", seed=2, scale=0.01))
    result = gate_and_publish(registry, back, str(tiny_model_dir), heldout, FAST)  # near the base, far from the parent
    assert not result.passed and "KL to the parent far" in result.reason and result.metrics["kl_token_base"] < 0.01
    assert registry.active() == "far"


def test_reward_check_prefers_the_version_that_moved_toward_liked_answers(tmp_path, tiny_model_dir, heldout):
    from schemas.adapters import AdapterVersion

    train_topics = TOPICS[:6]
    good_dir = write_trained_adapter(
        tiny_model_dir, tmp_path, "good", [(f"How do I {t}?", BEHAVIOR, GOOD) for t in train_topics], steps=12, lr=1e-2
    )
    bad_dir = write_trained_adapter(
        tiny_model_dir, tmp_path, "bad", [(f"How do I {t}?", BEHAVIOR, BAD) for t in train_topics], steps=12, lr=1e-2
    )
    good = AdapterVersion(name="good", id=1, path=str(good_dir))
    bad = AdapterVersion(name="bad", id=2, path=str(bad_dir))
    cfg = GateConfig(kl_bound=100.0, max_prompts=1, max_new_tokens=2, min_pairs=10, threads=1)

    vs_base = evaluate(good, None, str(tiny_model_dir), heldout, cfg)
    assert vs_base.passed and vs_base.metrics["rank_acc"] > 0.9 and vs_base.metrics["rank_acc_active"] == 0.5
    worse = evaluate(bad, good, str(tiny_model_dir), heldout, cfg)
    assert not worse.passed and "ranking accuracy" in worse.reason
    assert worse.metrics["rank_acc"] < 0.1 and worse.metrics["rank_acc_active"] > 0.9
    assert worse.metrics["rank_pairs"] == 36  # 6 liked x 6 disliked held-out answers
