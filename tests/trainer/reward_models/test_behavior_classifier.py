"""RLHBC's multi-head behavior classifier learns a separable toy preference and rewards it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.behavior_toy import KEYWORD, toy_records
from trainer.reward_models.behavior_classifier import (
    CLASSIFIER_CONFIG,
    CLASSIFIER_WEIGHTS,
    ClassifierConfig,
    load_behavior_classifier,
    save_behavior_classifier,
    train_behavior_classifier,
)
from trainer.reward_models.encoder import EncoderConfig


def paper_keyed(records):
    """The toy records in the paper encoding's keys (views, likes, dislikes): one head per indicator."""
    return [
        r.model_copy(
            update={
                "buckets": {
                    "view": int(r.counts["view"]) % 3,
                    "like": r.buckets["like_rate"],
                    "dislike": r.buckets["dislike_rate"],
                },
                "encoding": "paper",
            }
        )
        for r in records
    ]


@pytest.fixture(scope="module")
def trained():
    records = paper_keyed(toy_records(n_queries=40))
    # two of MiniLM's six layers and one epoch learn the keyword; keeps the test fast on busy cores
    config = ClassifierConfig(
        encoder=EncoderConfig(num_layers=2), epochs=1, batch_size=16, lr=3e-4, held_out_fraction=0.25
    )
    return train_behavior_classifier(records, config, seed=0)


def test_heads_and_classes_come_from_records(trained):
    model, _ = trained
    assert model.heads == ("dislike", "like", "view")
    assert model.num_classes == 3
    # dislike is the negative indicator (Indicator.positive); views are exposure and carry no reward weight
    assert model.positive_mask.tolist() == [False, True, True]
    assert model.head_weights.tolist() == [1.0, 1.0, 0.0]


def test_learns_keyword_preference_on_held_out_queries(trained):
    _, metrics = trained
    assert metrics["held_out_records"] == 20  # 10 of 40 queries, two answers each
    assert metrics["accuracy_like"] > 0.8, metrics
    assert metrics["accuracy_dislike"] > 0.8, metrics
    assert metrics["reward_corr"] > 0.5, metrics


def test_reward_prefers_keyword_answers_on_unseen_text(trained):
    model, _ = trained
    queries = ["Tell me about a volcano?", "Tell me about a violin?"]
    liked = model.score(queries, [f"A volcano is like a {KEYWORD}.", f"The violin is like a {KEYWORD}."])
    other = model.score(queries, ["A volcano is what it is.", "The violin is what it is."])
    assert liked.shape == (2,) and ((liked >= -1) & (liked <= 1)).all()
    assert (liked > other).all(), (liked, other)


def test_save_and_load_gives_the_same_scores(trained, tmp_path):
    model, _ = trained
    folder = save_behavior_classifier(model, tmp_path / "clf")
    loaded = load_behavior_classifier(folder)
    assert (loaded.heads, loaded.num_classes, loaded.config) == (model.heads, model.num_classes, model.config)
    assert loaded.head_weights.tolist() == model.head_weights.tolist()
    queries = ["Tell me about a volcano?", "Tell me about a volcano?"]
    answers = [f"A volcano is like a {KEYWORD}.", "A volcano is what it is."]
    # the trained tensors come back: bit-identical rewards (a fresh MiniLM + random heads would differ)
    assert torch.equal(loaded.score(queries, answers), model.score(queries, answers))
    assert loaded.config.encoder.num_layers == 2 and len(loaded.encoder.trunk.encoder.layer) == 2


def test_load_refuses_missing_or_mismatched_files(trained, tmp_path):
    model, _ = trained
    with pytest.raises(ValueError, match="no saved behavior classifier"):
        load_behavior_classifier(tmp_path / "nothing")
    folder = save_behavior_classifier(model, tmp_path / "clf")
    meta = json.loads((folder / CLASSIFIER_CONFIG).read_text())
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**meta, "num_classes": 5}))  # heads of another shape
    with pytest.raises(ValueError, match="does not match its config"):
        load_behavior_classifier(folder)
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ValueError, match="not a behavior classifier config"):
        load_behavior_classifier(folder)
    deeper = {**meta["config"]["encoder"], "num_layers": 3}  # a third encoder layer the file has no weights for
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps({**meta, "config": {**meta["config"], "encoder": deeper}}))
    with pytest.raises(ValueError, match="does not match its config"):
        load_behavior_classifier(folder)


def test_base_lm_backbone_trains_its_own_lora(tiny_model_dir, tmp_path):
    records = toy_records(n_queries=6)
    config = ClassifierConfig(
        encoder=EncoderConfig(backbone="base", model_path=str(tiny_model_dir), lora_r=4), epochs=1, batch_size=4
    )
    model, metrics = train_behavior_classifier(records, config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert model.score(["q"], ["a"]).shape == (1,)
    assert metrics["train_loss"] > 0
    # saved: only the LoRA and the head (the frozen trunk is rebuilt from the base model folder)
    folder = save_behavior_classifier(model, tmp_path / "clf")
    from safetensors.torch import load_file

    assert sorted(load_file(str(folder / CLASSIFIER_WEIGHTS))) == sorted(trainable)
    loaded = load_behavior_classifier(folder)
    assert torch.equal(
        loaded.score(["q", "a longer query"], ["a", "b"]), model.score(["q", "a longer query"], ["a", "b"])
    )


def test_helpful_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierConfig(num_classes=1)
    with pytest.raises(ValueError, match="model_path"):
        EncoderConfig(backbone="base")
    records = [r.model_copy(update={"buckets": {"view": 1}}) for r in toy_records(2)]
    with pytest.raises(ValueError, match="weight 0"):
        train_behavior_classifier(records, ClassifierConfig(epochs=1))
    with pytest.raises(ValueError, match="needs records"):
        train_behavior_classifier([], ClassifierConfig())
