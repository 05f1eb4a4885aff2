"""One RLHB iteration on the tiny model: what trains, what must not, and determinism."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.text_measures import ends_cleanly
from tests.helpers.toy_task import DISLIKED, LIKED, toy_record, toy_records
from trainer.algorithms.base import TrainRequest
from trainer.algorithms.rlhb import Config, RLHBTrainer, cut_mid_sentence, truncate_words
from trainer.rollouts import Prompt


def small_config(**overrides) -> Config:
    base = dict(
        batch_size=8, rollouts_per_prompt=4, max_new_tokens=4, minibatch_size=4,  # 2 actor steps: LoRA A moves too
        d_batch_size=4, d_updates_per_iteration=2, heldout_max=8, lora_r=4, d_lora_r=4, threads=1,
        value_head_hidden=16,
    )  # fmt: skip
    base.update(overrides)
    return Config(**base)


def make_trainer(model_dir, tmp_path, seed=0, **overrides) -> RLHBTrainer:
    request = TrainRequest(
        records=toy_records(40), model_path=str(model_dir), output_root=tmp_path, version_name="v", seed=seed,
        steps=1, progress=False,
    )  # fmt: skip
    return RLHBTrainer(request, small_config(**overrides))


def snapshot(module: torch.nn.Module) -> dict[str, tuple[bool, torch.Tensor]]:
    return {n: (p.requires_grad, p.detach().clone()) for n, p in module.named_parameters()}


def modules(trainer: RLHBTrainer) -> dict[str, torch.nn.Module]:
    found = {"policy": trainer.policy.model, "value_head": trainer.policy.value_head, "d": trainer.discriminator}
    if hasattr(trainer.discriminator, "_frozen"):
        found["d_behavior_encoder"] = trainer.discriminator._frozen[0]
    return found


@pytest.mark.parametrize("kind", ["minilm", "lm"])
def test_one_step_trains_every_trainable_parameter_and_no_frozen_one(tiny_model_dir, tmp_path, kind, caplog):
    trainer = make_trainer(tiny_model_dir, tmp_path, discriminator=kind, chance_margin=0.49)
    untrained_acc = trainer.heldout_acc  # no warm-up: D has never been trained
    before = {name: snapshot(m) for name, m in modules(trainer).items()}
    with caplog.at_level("WARNING", logger="trainer.algorithms.rlhb"):
        metrics = trainer.iteration(0)
    # PPO on a D at chance (within chance_margin of 0.5) is flagged and logged loudly. An untrained D
    # on 4 held-out queries (by query: 7-8 pairs) can read anywhere in [0, 1]: the flag must follow it.
    at_chance = abs(untrained_acc - 0.5) <= 0.49
    assert metrics["d_at_chance"] == float(at_chance)
    assert ("THE DISCRIMINATOR IS AT CHANCE" in caplog.text) == at_chance
    trained, frozen = [], []
    for name, module in modules(trainer).items():
        for param_name, param in module.named_parameters():
            was_trainable, old = before[name][param_name]
            (trained if was_trainable else frozen).append((f"{name}.{param_name}", old, param.detach()))
    assert any("lora_A" in n for n, _, _ in trained) and any("lora_B" in n for n, _, _ in trained)
    assert any(n.startswith("value_head") for n, _, _ in trained)
    assert any(n.startswith("d.") for n, _, _ in trained)
    unchanged = [n for n, old, new in trained if torch.equal(old, new)]
    assert not unchanged, f"trainable parameters that did not change: {unchanged[:5]}"
    moved = [n for n, old, new in frozen if not torch.equal(old, new)]
    assert not moved, f"frozen parameters that changed: {moved[:5]}"
    assert len(frozen) > len(trained) // 4  # the base weights really are there, and frozen
    for key in ("d_loss", "d_reward", "mean_return", "kl", "value_loss", "entropy", "clipfrac", "d_heldout_acc"):
        assert math.isfinite(metrics[key]), key
    for key in ("approx_kl", "old_approx_kl", "value_clipfrac", "explained_var", "kl_coef", "ppo_updates"):
        assert key in metrics, key  # PPO's metrics reach every algorithm's row


def test_reference_policy_is_the_base_model_with_the_adapter_disabled(tiny_model_dir, tmp_path):
    """After a step the policy moved away from the reference, and the reference is exactly
    the untouched base model (no second copy of the weights exists to drift)."""
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tiny_model_dir, tmp_path, learning_rate=5e-2)
    trainer.iteration(0)
    batch = trainer.policy.generate([Prompt("Tell me about item 1.", LIKED), Prompt("Hi", DISLIKED)], 2)
    with torch.no_grad():
        ref = trainer.policy.forward(batch, reference=True).logprobs
        policy = trainer.policy.forward(batch).logprobs
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        pristine = trainer.policy.__class__(base, trainer.policy.tokenizer, trainer.policy.value_head, trainer.config)
        # a plain model has no disable_adapter(); score it through the same forward path
        pristine_logprobs = pristine.forward(batch).logprobs
    mask = batch.response_mask.bool()
    assert torch.allclose(ref[mask], pristine_logprobs[mask], atol=1e-5)
    assert not torch.allclose(policy[mask], ref[mask], atol=1e-4)


def test_runs_are_deterministic_under_a_seed(tiny_model_dir, tmp_path):
    results = []
    for run in range(2):
        trainer = make_trainer(tiny_model_dir, tmp_path / str(run), seed=7)
        metrics = trainer.iteration(0)
        # NaN (a measure with nothing to measure, e.g. no held-out answer swaps) never equals itself: compare as None
        metrics = {k: None if v != v else v for k, v in metrics.items() if not k.startswith("seconds")}
        weights = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
        d_weights = {n: p.detach().clone() for n, p in trainer.discriminator.named_parameters() if p.requires_grad}
        results.append((metrics, weights, d_weights))
    (m1, w1, d1), (m2, w2, d2) = results
    assert m1 == m2
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert d1.keys() == d2.keys() and all(torch.equal(d1[k], d2[k]) for k in d1)


def test_fused_first_forward_gives_the_same_update(tiny_model_dir, tmp_path):
    """One epoch over one minibatch reuses the rollout-time forward; the update must not change."""
    weights = []
    for fused in (True, False):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / str(fused), seed=3, ppo_epochs=1, minibatch_size=0, num_minibatches=1,
            discriminator="lm",
        )  # fmt: skip
        trainer.core.fuse_first_forward = fused
        metrics = trainer.iteration(0)
        lora = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad}
        weights.append((metrics, lora))
    (m1, w1), (m2, w2) = weights
    assert m1["policy_loss"] == pytest.approx(m2["policy_loss"], abs=1e-6)
    assert m1["entropy"] == pytest.approx(m2["entropy"], rel=1e-6)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_preferred_prompt_share_puts_the_served_sentence_in_that_share_of_prompts(tiny_model_dir, tmp_path, share):
    trainer = make_trainer(tiny_model_dir, tmp_path, preferred_prompt_share=share, batch_size=400)  # 100 prompts
    preferred = trainer.pool.most_preferred()
    prompts = trainer.sample_prompts()
    assert len(prompts) == 100
    got = sum(p.behavior == preferred for p in prompts) / len(prompts)
    natural = sum(r.behavior_text == preferred for r in trainer.train_records) / len(trainer.train_records)
    expected = share + (1 - share) * natural  # the rest keep their record's behavior, which may be it too
    assert abs(got - expected) <= 0.15, (got, expected)
    assert {p.query for p in prompts} <= {r.query for r in trainer.train_records}


def mixed_records(n: int = 40) -> list:
    """Toy records whose questions are each asked under both sentences (10 questions, liked and disliked)."""
    liked = [(i // 10) % 2 == 0 for i in range(n)]
    return [
        toy_record(i, f"Tell me about item {i % 10}.", f"{'good ' if liked[i] else ''}answer {i}", liked=liked[i])
        for i in range(n)
    ]


def test_answer_swaps_keep_question_and_sentence_and_take_a_sibling_answer(tiny_model_dir, tmp_path):
    request = TrainRequest(
        records=mixed_records(), model_path=str(tiny_model_dir), output_root=tmp_path, version_name="v", seed=0,
        steps=1, progress=False,
    )  # fmt: skip
    trainer = RLHBTrainer(request, small_config(d_answer_swap_share=1.0))
    by_answer = {r.response: r for r in trainer.train_records}
    swapped = trainer._swapped_batch(32)
    for query, answer, behavior in swapped:
        other = by_answer[answer]  # a logged answer, never a made-up one
        assert other.query == query and other.behavior_text != behavior  # same question, other levels
        assert any(r.query == query and r.behavior_text == behavior for r in trainer.train_records)
    # held out: answer-swapped pairs exist (mixed questions), and D's AUROC on them is measured
    assert any(a is not None for a in trainer.heldout_answer_swaps)
    assert 0.0 <= trainer.heldout_accuracy()["d_heldout_answer_auroc"] <= 1.0
    # at 0 every swap is a behavior swap: the answer stays the record's own
    trainer.config = small_config(d_answer_swap_share=0.0)
    for query, answer, behavior in trainer._swapped_batch(32):
        assert by_answer[answer].query == query and by_answer[answer].behavior_text != behavior
        assert behavior in (LIKED, DISLIKED)


def test_answer_swaps_fall_back_to_behavior_swaps_without_siblings(tiny_model_dir, tmp_path):
    # toy_records: each question is always liked or always disliked, so no record has an answer swap
    trainer = make_trainer(tiny_model_dir, tmp_path, d_answer_swap_share=1.0)
    assert not any(trainer.answer_siblings)
    own = {(r.query, r.response) for r in trainer.train_records}
    assert all((q, a) in own for q, a, _ in trainer._swapped_batch(16))
    assert math.isnan(trainer.heldout_accuracy()["d_heldout_answer_auroc"])


def test_kappa_relabels_the_highest_rewarded_real_records_as_fake(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, kappa=0.25, swap_share=0.25, d_batch_size=8)
    top = {(r.query, r.response, r.behavior_text) for r in trainer.top_records}
    assert min(r.reward for r in trainer.top_records) >= max(
        r.reward for r in trainer.train_records if (r.query, r.response, r.behavior_text) not in top
    )
    real = {(r.query, r.response, r.behavior_text) for r in trainer.train_records}
    generated = [("q", f"generated {i}", LIKED) for i in range(8)]
    fake = trainer._fake_batch(generated)
    boot = [t for t in fake if t in top]
    assert len(fake) == 8 and len(boot) == 2  # kappa * d_batch_size, all real logged triplets
    assert all(t in real for t in boot)
    assert sum(t in generated for t in fake) == 4  # the rest: swapped reals (2) and fresh rollouts (4)
    # the other reading: the best generations so far fill the bootstrap share
    other = make_trainer(tiny_model_dir, tmp_path / "g", kappa=0.25, kappa_source="generations", d_batch_size=8)
    other._remember(generated, torch.arange(8.0))
    assert sum(t in generated for t in other._fake_batch(generated[:1])) >= 2


def test_replay_reservoir_feeds_older_generations_to_d(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_replay_size=4, d_replay_share=1.0, d_batch_size=8)
    old = [("q", f"old {i}", LIKED) for i in range(20)]
    trainer._keep_for_replay(old)
    assert len(trainer.replay) == 4 and set(trainer.replay) <= set(old)
    fake = trainer._fake_batch([("q", "new", LIKED)])
    assert ("q", "new", LIKED) not in fake and any(t in trainer.replay for t in fake)


def test_d_step_is_skipped_when_d_already_separates_the_batch(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_max_acc=0.51)
    for _ in range(30):  # at 0.51 almost any trained batch counts as separated
        stats = trainer.d_step([])
        if stats["d_skipped"]:
            break
    assert stats["d_skipped"] == 1.0
    before = {n: p.detach().clone() for n, p in trainer.discriminator.named_parameters() if p.requires_grad}
    # the same batch again (same rng state is not needed: only the skip decision matters)
    while not (stats := trainer.d_step([]))["d_skipped"]:
        before = {n: p.detach().clone() for n, p in trainer.discriminator.named_parameters() if p.requires_grad}
    after = dict(trainer.discriminator.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before)
    never = make_trainer(tiny_model_dir, tmp_path / "n")
    assert all(never.d_step([])["d_skipped"] == 0.0 for _ in range(3))


def test_an_iteration_logs_the_discriminators_seconds_apart_from_ppos(tiny_model_dir, tmp_path, monkeypatch):
    """seconds_discriminator is D's step 5 (its updates) plus its held-out measurement, and none of PPO's phases."""
    trainer = make_trainer(tiny_model_dir, tmp_path)  # d_updates_per_iteration=2
    slow = 0.3
    for name in ("d_step", "heldout_accuracy"):
        real = getattr(trainer, name)

        def slowed(*args, _real=real, **kwargs):
            time.sleep(slow)
            return _real(*args, **kwargs)

        monkeypatch.setattr(trainer, name, slowed)
    metrics = trainer.iteration(0)
    assert metrics["seconds_discriminator"] >= 3 * slow  # two D updates and one held-out measurement
    for phase in ("seconds_generate", "seconds_score", "seconds_update"):
        assert 0 < metrics[phase] < metrics["seconds_discriminator"], phase


def test_heldout_metrics_include_auroc(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    held = trainer.heldout_accuracy()
    assert 0.0 <= held["d_heldout_auroc"] <= 1.0 and 0.0 <= held["d_heldout_acc"] <= 1.0


def test_d_learning_rates_scale_once_ppo_starts(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_adversarial_lr_scale=0.1)
    warm = [g["lr"] for g in trainer.d_optimizer.param_groups]
    trainer.d_step([])  # warm-up steps keep the full rates
    assert [g["lr"] for g in trainer.d_optimizer.param_groups] == warm
    trainer.iteration(0)
    trainer.iteration(1)  # scaled once, not once per iteration
    assert [g["lr"] for g in trainer.d_optimizer.param_groups] == pytest.approx([lr * 0.1 for lr in warm])


def test_kl_reference_start_is_the_policy_as_ppo_found_it_and_stays_frozen(tiny_model_dir, tmp_path):
    """kl_reference="start": the first rollout freezes a copy of the adapter as the reference, so the KL
    is zero at the first batch however far the adapter is from the base; the copy then stays put
    while the policy trains, and the saved adapter holds the trained weights alone."""
    trainer = make_trainer(tiny_model_dir, tmp_path, learning_rate=5e-2, kl_reference="start")
    with torch.no_grad():  # a start far from the base, as after steering or an earlier round
        for name, p in trainer.policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    trainable = [n for n, p in trainer.policy.model.named_parameters() if p.requires_grad]
    metrics = trainer.iteration(0)
    assert trainer.policy.reference_frozen
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-4)  # KL(pi_old || reference) at the first rollout
    assert [n for n, p in trainer.policy.model.named_parameters() if p.requires_grad] == trainable
    batch = trainer.policy.generate([Prompt("Tell me about item 1.", LIKED), Prompt("Hi", DISLIKED)], 2)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        ref = trainer.policy.forward(batch, reference=True).logprobs
        policy = trainer.policy.forward(batch).logprobs
        trainer.policy.reference_frozen = False  # the same call, routed to the base (adapter disabled)
        base = trainer.policy.forward(batch, reference=True).logprobs
        trainer.policy.reference_frozen = True
    assert not torch.allclose(ref[mask], base[mask], atol=1e-3)  # the copy is the perturbed start, not the base
    assert not torch.allclose(policy[mask], ref[mask], atol=1e-4)  # the policy trained away from the copy
    frozen = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "frozen_reference" in n}
    assert frozen and not any(p.requires_grad for n, p in trainer.policy.model.named_parameters() if n in frozen)
    trainer.iteration(1)
    after = dict(trainer.policy.model.named_parameters())
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    trainer.save_adapter(tmp_path / "saved")
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "saved" / "frozen_reference").exists()


def test_kl_reference_is_validated_with_a_message():
    with pytest.raises(ValueError, match="kl_reference must be one of"):
        small_config(kl_reference="parent")


def test_frozen_encoder_d_trains_its_head_alone_and_encodes_each_pair_once(tiny_model_dir, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_freeze_encoder=True)
    d = trainer.discriminator
    encoder_before = {n: p.detach().clone() for n, p in d.encoder.named_parameters()}
    head_before = [p.detach().clone() for p in d.head_parameters()]
    encoded: list[tuple[str, str]] = []  # (question, answer) pairs that went through the encoder f
    real_encode = type(d)._encode

    def spy(model, texts, pairs=None):
        if model is d.encoder:
            encoded.extend(zip(texts, pairs, strict=True))
        return real_encode(d, model, texts, pairs)

    monkeypatch.setattr(d, "_encode", spy)
    cached_at_start = len(d._feature_cache)  # the held-out pairs, scored once when the trainer was built
    for _ in range(4):
        trainer.d_step([])
    assert all(torch.equal(p, encoder_before[n]) for n, p in d.encoder.named_parameters())
    assert any(not torch.equal(p, old) for p, old in zip(d.head_parameters(), head_before, strict=True))
    assert encoded and len(encoded) == len(set(encoded)) == len(d._feature_cache) - cached_at_start
    trainer.heldout_accuracy()
    trainer.heldout_accuracy()
    assert len(encoded) == len(set(encoded))  # held-out pairs came from the cache, twice
    r = trainer.train_records[0]
    with torch.no_grad():
        fresh = real_encode(d, d.encoder, [r.query], [r.response])[0]
    assert torch.allclose(d.answer_features([r.query], [r.response])[0], fresh, atol=1e-6)


def test_policy_lm_answer_encoder_is_frozen_cached_and_reads_the_answers_end(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_answer_encoder="policy")
    d = trainer.discriminator
    lm = d._answer_lm
    assert d.encoder is None and lm is not None and d.freeze_encoder
    assert d.body_parameters() == [] and not any(p.requires_grad for p in lm.model.parameters())
    assert d.proj_answer.in_features == lm.hidden_size  # P takes the LM's width, not MiniLM's
    lm_before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    head_before = [p.detach().clone() for p in d.head_parameters()]
    for _ in range(3):
        trainer.d_step([])
    assert all(torch.equal(p, lm_before[n]) for n, p in lm.model.named_parameters())
    assert any(not torch.equal(p, old) for p, old in zip(d.head_parameters(), head_before, strict=True))
    # f is the LM's last hidden state of the chat-templated exchange, layer-normalized, and served from the cache
    r = trainer.train_records[0]
    ids = lm.tokenizer(lm._text(r.query, r.response), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = lm.model(input_ids=ids).last_hidden_state[0, -1].float()
    expected = torch.nn.functional.layer_norm(last, (last.shape[-1],))
    assert torch.allclose(d.answer_features([r.query], [r.response])[0], expected, atol=1e-4)
    assert (r.query, r.response) in d._feature_cache
    # the whole answer reaches f: answers that differ only in their first word or in how they end differ in f
    q = "What is the capital of France?"
    feats = lm([q] * 3, ["Paris is the capital.", "Lyon is the capital.", "Paris is the capital"])
    assert not torch.allclose(feats[0], feats[1], atol=1e-4) and not torch.allclose(feats[0], feats[2], atol=1e-4)


def test_policy_lm_answer_encoder_is_only_for_the_factorized_d():
    with pytest.raises(ValueError, match='d_answer_encoder="policy" sets f'):
        small_config(discriminator="lm", d_answer_encoder="policy")
    with pytest.raises(ValueError, match="d_answer_encoder must be one of"):
        small_config(d_answer_encoder="bert")


def test_answer_statistics_are_the_gates_measures_scaled():
    from trainer.discriminator import ANSWER_STATISTICS, answer_statistics

    stats = answer_statistics(["Paris is the capital.", "I cannot help with that", "the cat the cat the cat", ""])
    assert stats.shape == (4, len(ANSWER_STATISTICS))
    words, clean, repeated, refusal = stats.T
    assert words[0] == pytest.approx(math.log1p(4) / math.log(256)) and words[3] == 0
    assert clean.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert repeated[2] > 0.3 and repeated[0] == 0
    assert refusal.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_text_features_put_the_answers_statistics_into_d_and_train_them(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, d_text_features=True)
    d = trainer.discriminator
    assert d.proj_statistics is not None and any(p is d.proj_statistics.weight for p in d.head_parameters())
    queries, answers, behaviors = ["What is the capital of France?"] * 2, ["Paris.", "Paris"], [LIKED] * 2
    with torch.no_grad():
        with_stats = d.logits(queries, answers, behaviors)
        d.proj_statistics.weight.zero_()
        without = d.logits(queries, answers, behaviors)
        d.proj_statistics.weight.normal_()
        moved = d.logits(queries, answers, behaviors)
    assert not torch.allclose(with_stats, without) and not torch.allclose(moved, without)
    before = d.proj_statistics.weight.detach().clone()
    trainer.d_step([])
    assert not torch.equal(before, d.proj_statistics.weight)  # trained with the head


def test_text_features_are_only_for_the_minilm_d():
    with pytest.raises(ValueError, match='d_text_features applies to discriminator="minilm"'):
        small_config(discriminator="lm", d_text_features=True)


def test_frozen_encoder_is_only_for_the_minilm_d():
    with pytest.raises(ValueError, match='d_freeze_encoder applies to discriminator="minilm"'):
        small_config(discriminator="lm", d_freeze_encoder=True)


@given(
    answer=st.lists(st.sampled_from(["cat", "dog", "good", "sky."]), max_size=30).map(" ".join),
    max_words=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_truncate_words_keeps_a_short_strict_prefix(answer, max_words, seed):
    cut = truncate_words(answer, max_words, random.Random(seed))
    kept = cut.split()
    assert kept == answer.split()[: len(kept)]  # a prefix, word for word
    assert len(kept) <= max_words and (len(kept) < len(answer.split()) or not answer)


@given(
    answer=st.lists(st.sampled_from(["cat", "dog", "good", "sky.", "sea?", "5"]), max_size=30).map(" ".join),
    seed=st.integers(0, 1000),
)
def test_cut_mid_sentence_stops_where_no_sentence_ends(answer, seed):
    cut = cut_mid_sentence(answer, random.Random(seed))
    kept = cut.split()
    assert kept == answer.split()[: len(kept)]  # a prefix, word for word
    assert len(kept) < len(answer.split()) or not answer  # never the whole answer
    assert not kept or not ends_cleanly(cut)  # empty, or it stops mid-sentence


def test_mid_sentence_fakes_come_at_every_length_and_never_end_a_sentence(tiny_model_dir, tmp_path):
    """d_truncated_cut="mid_sentence": every cut fake is a prefix of a training answer that stops where no
    sentence ends (never after "w2." below), and the cuts are not all short, unlike "head"'s."""
    trainer = make_trainer(
        tiny_model_dir, tmp_path, d_truncated_share=1.0, swap_share=0.0, kappa=0.0, d_batch_size=64,
        d_truncated_cut="mid_sentence", d_truncated_max_words=1,
    )  # fmt: skip

    def two_sentences(answer: str) -> str:  # "w1 w2. w3 w4."
        w = (answer.split() + ["more"])[:4]
        return f"{w[0]} {w[1]}. {w[2]} {w[3]}."

    records = trainer.train_records
    trainer.train_records = [r.model_copy(update={"response": two_sentences(r.response)}) for r in records]
    answers = {r.response for r in trainer.train_records}
    cut = [a for _, a, _ in trainer._fake_batch([]) + trainer._fake_batch([])]
    assert {len(a.split()) for a in cut} == {0, 1, 3}  # after w1 or w3, or empty; never after "w2." or whole
    assert all(any(w.split()[: len(a.split())] == a.split() for w in answers) for a in cut)
    assert not any(ends_cleanly(a) for a in cut if a)


def test_mid_sentence_fakes_teach_d_that_an_unfinished_answer_is_worse(tiny_model_dir, tmp_path):
    """d_heldout_cut_win (held-out answers D would rather see stopped mid-sentence) falls when D trains on
    mid-sentence fakes, and is reported beside d_heldout_truncated_win."""
    wins = {}
    for share in (0.0, 0.5):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / str(share), d_truncated_share=share, d_truncated_cut="mid_sentence",
            swap_share=0.5, kappa=0.0, d_batch_size=8, preferred_prompt_share=1.0,
        )  # fmt: skip
        for _ in range(40):
            trainer.d_step([])
        held = trainer.heldout_accuracy()
        assert 0.0 <= held["d_heldout_truncated_win"] <= 1.0
        wins[share] = held["d_heldout_cut_win"]
    assert wins[0.5] < wins[0.0]


def test_truncated_fakes_are_cut_real_answers_under_the_sentence_ppo_prompts_carry(tiny_model_dir, tmp_path):
    trainer = make_trainer(
        tiny_model_dir, tmp_path, d_truncated_share=0.25, swap_share=0.25, kappa=0.0, d_batch_size=8,
        d_truncated_max_words=2, preferred_prompt_share=1.0,
    )  # fmt: skip
    answers: dict[str, set[str]] = {}
    for r in trainer.train_records:
        answers.setdefault(r.query, set()).add(r.response)
    served = trainer.pool.most_preferred()
    generated = [("q", f"generated {i}", LIKED) for i in range(8)]
    for fake in (trainer._fake_batch(generated), trainer._fake_batch([])):  # PPO, then warm-up
        assert len(fake) == 8
        cut = [t for t in fake if t[0] in answers and t[1] not in answers[t[0]]]
        assert len(cut) == 2 and all(b == served and len(a.split()) <= 2 for _, a, b in cut)
        assert all(any(w.split()[: len(a.split())] == a.split() for w in answers[q]) for q, a, _ in cut)
    # preferred_prompt_share 0: each cut answer keeps its own record's sentence
    own = make_trainer(tiny_model_dir, tmp_path / "own", d_truncated_share=1.0, swap_share=0.0, kappa=0.0)
    fakes = own._fake_batch([]) + own._fake_batch([])
    assert all(
        any(r.query == q and r.behavior_text == b and r.response.split()[: len(a.split())] == a.split()
            for r in own.train_records)
        for q, a, b in fakes
    )  # fmt: skip
    assert {b for _, _, b in fakes} & {DISLIKED}  # not all on the served sentence


def test_truncated_fakes_teach_d_that_a_cut_answer_is_worse_than_the_whole(tiny_model_dir, tmp_path):
    """d_heldout_truncated_win (the share of held-out answers D would rather see cut to a few words)
    falls when D trains on truncated fakes, and is reported with the held-out metrics."""
    wins = {}
    for share in (0.0, 0.5):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / str(share), d_truncated_share=share, swap_share=0.5, kappa=0.0,
            d_batch_size=8, preferred_prompt_share=1.0,
        )  # fmt: skip
        for _ in range(40):
            trainer.d_step([])
        wins[share] = trainer.heldout_accuracy()["d_heldout_truncated_win"]
    assert wins[0.5] < wins[0.0]


def test_realness_weight_adds_log_d_to_the_contrast(tiny_model_dir, tmp_path):
    """The contrast cancels what does not depend on b; the realness term is w * log D(s, a; b) on top of it."""
    plain = make_trainer(tiny_model_dir, tmp_path / "plain")
    real = make_trainer(tiny_model_dir, tmp_path / "real", reward_realness_weight=0.5)
    queries, answers, behaviors = ["q1", "q2"], ["good cat", ""], [LIKED, LIKED]
    base, z = plain._score(queries, answers, behaviors)
    with_realness, z2 = real._score(queries, answers, behaviors)
    assert torch.allclose(z, z2)  # same seed, same D
    assert torch.allclose(with_realness, base + 0.5 * torch.nn.functional.logsigmoid(z))
