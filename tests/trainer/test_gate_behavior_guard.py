"""The gate's behavior guard: the candidate and its parent answer the same held-out prompts and
a terse, empty or repetitive candidate is blocked (real LoRAs on the tiny model, real registry,
real MiniLM); plus the guard's comparison on the measured runs the default bounds come from."""

from __future__ import annotations

import pytest

from core.registry import Registry
from schemas.adapters import AdapterStatus, AdapterVersion
from tests.helpers.adapter_factory import write_test_adapter, write_trained_adapter
from tests.trainer.test_gate import BEHAVIOR, TOPICS, record
from trainer.gate import GateConfig, compare_behavior, evaluate, gate_and_publish, guard_prompts

GUARD = GateConfig(max_prompts=6, max_new_tokens=16, max_records=16, batch_size=8, threads=1)
GUARD_ONLY = GUARD.model_copy(update={"kl_bound": 100.0})  # these candidates are far in KL too
GUARD_METRICS = (
    "mean_words", "near_empty_share", "refusal_share", "unfinished_share", "repeated_ngram_rate", "relevance",
)  # fmt: skip
# On the tiny random model a LoRA on the attention/MLP layers alone barely moves sampling; with
# the LM head too, 30 SFT steps make the trained answers dominate temperature-1 sampling.
SFT_MODULES = ("q_proj", "v_proj", "o_proj", "down_proj", "lm_head")
TRAIN_QUESTIONS = [f"How do I {t}?" for t in TOPICS[:6]]


@pytest.fixture
def heldout():
    return [record(2 * i + g, t, bool(g)) for i, t in enumerate(TOPICS[6:]) for g in (0, 1)]


@pytest.fixture
def registry(tmp_path, redis_client, redis_prefix):
    return Registry(tmp_path / "adapters", redis_client, redis_prefix)


@pytest.fixture(scope="module")
def terse_dir(tiny_model_dir, tmp_path_factory):
    """Trained to stop at once (every answer is EOS): the 1-token collapse of direct-reward RL."""
    return write_trained_adapter(
        tiny_model_dir,
        tmp_path_factory.mktemp("terse"),
        "terse",
        [(q, BEHAVIOR, "") for q in TRAIN_QUESTIONS],
        steps=20,
        lr=1e-2,
        target_modules=SFT_MODULES,
    )


def test_a_terse_candidate_is_blocked_with_the_reason_in_the_registry(registry, tiny_model_dir, heldout, terse_dir):
    import shutil

    shutil.copytree(terse_dir, registry.root / "terse")
    terse = registry.register(registry.root / "terse")
    result = gate_and_publish(registry, terse, str(tiny_model_dir), heldout, GUARD)
    assert not result.passed
    assert "behavior guard: near-empty answers (< 4 words) 0.00 -> 1.00 (bound +0.10)" in result.reason
    assert "behavior guard: mean answer length" in result.reason and "-100%, bound -60%" in result.reason
    assert "KL" in result.reason  # every failed check is named
    assert registry.active() == "base"
    assert registry.get("terse").status == AdapterStatus.rejected and registry.get("terse").reason == result.reason
    m = result.metrics
    assert m["near_empty_share"] == 1.0 and m["near_empty_share_parent"] == 0.0
    assert m["mean_words"] == 0.0 and m["mean_words_parent"] > 5 and m["length_drop"] == 1.0
    for key in GUARD_METRICS:
        assert key in m and f"{key}_parent" in m

    # the guard alone blocks it (KL bound out of the way)
    alone = evaluate(terse, None, str(tiny_model_dir), heldout, GUARD_ONLY)
    assert not alone.passed and "near-empty answers" in alone.reason and "KL" not in alone.reason


def test_the_parent_is_the_active_version(tiny_model_dir, heldout, terse_dir):
    """Against a parent that is just as terse, nothing moved: the guard passes."""
    terse = AdapterVersion(name="terse", id=1, path=str(terse_dir))
    same = evaluate(terse, terse, str(tiny_model_dir), heldout, GUARD_ONLY)
    assert same.passed, same.reason
    assert same.metrics["near_empty_share_parent"] == same.metrics["near_empty_share"] == 1.0


def test_a_repetitive_candidate_is_blocked(tmp_path, tiny_model_dir, heldout):
    # one word repeated: the tiny random model learns which tokens to emit, not their order,
    # so a longer phrase comes out shuffled (and shorter); "good good good ..." stays a loop
    looping = write_trained_adapter(
        tiny_model_dir,
        tmp_path,
        "looping",
        [(q, BEHAVIOR, " ".join(["good"] * 24)) for q in TRAIN_QUESTIONS],
        steps=30,
        lr=2e-2,
        target_modules=SFT_MODULES,
    )
    result = evaluate(
        AdapterVersion(name="looping", id=1, path=str(looping)), None, str(tiny_model_dir), heldout, GUARD_ONLY
    )
    assert not result.passed
    assert "behavior guard: repeated 3-grams" in result.reason and "(bound +0.10)" in result.reason
    assert result.metrics["repeated_ngram_rate"] > 0.5 > result.metrics["repeated_ngram_rate_parent"]
    # mostly long loops, so it is the repetition guard that speaks for them; a few may also come out
    # near-empty (0.17 in one CI run in ~20: the sampling is not bit-stable across machines' threads)
    assert result.metrics["near_empty_share"] < 0.5 and result.metrics["mean_words"] > 8


def test_a_candidate_close_to_its_parent_passes_the_guard(registry, tiny_model_dir, heldout):
    registry.register(write_test_adapter(tiny_model_dir, registry.root, "parent", seed=1, scale=0.01))
    registry.promote("parent")
    near = registry.register(write_test_adapter(tiny_model_dir, registry.root, "near", seed=2, scale=0.01))
    result = gate_and_publish(registry, near, str(tiny_model_dir), heldout, GUARD)  # default bounds
    assert result.passed, result.reason
    assert registry.active() == "near"
    m = result.metrics
    for key in GUARD_METRICS:
        assert key in m and f"{key}_parent" in m
    assert m["near_empty_share"] - m["near_empty_share_parent"] <= GUARD.max_near_empty_increase
    assert m["length_drop"] < 0.2 and m["repeated_ngram_rate"] - m["repeated_ngram_rate_parent"] < 0.05

    skipped = evaluate(near, None, str(tiny_model_dir), heldout, GUARD.model_copy(update={"behavior_guard": False}))
    assert skipped.passed and skipped.metrics["behavior_guard_skipped"] == 1.0 and "mean_words" not in skipped.metrics


def measures(
    words: float,
    near_empty: float,
    relevance: float,
    repetition: float = 0.03,
    refusals: float = 0.0,
    unfinished: float = 0.6,  # base at 48 tokens: 0.55-0.64 in every run (E20)
):
    return {
        "mean_words": words,
        "near_empty_share": near_empty,
        "refusal_share": refusals,
        "unfinished_share": unfinished,
        "repeated_ngram_rate": repetition,
        "relevance": relevance,
    }


# The runs in bench/demo_experiments.md (352 held-out answers each; near-empty there: < 4 words)
BASE = measures(28.5, 0.009, 0.587, 0.029)
HEALTHY = {
    "E3 RLHB, shorter and on topic": measures(16.3, 0.026, 0.637, 0.019),
    "demo RLHBC": measures(15.7, 0.031, 0.733, 0.012),
    # E19 (176 answers, base unfinished 0.61): finishing more often is what these users liked
    "E19 rlhb-midcut, kl_coef 0.08, concise": measures(12.2, 0.045, 0.684, 0.011, unfinished=0.14),
}
HACKED = {
    "E4 RLHBC, a third near-empty": (measures(6.9, 0.324, 0.576, 0.005), ("near-empty", "answer length")),
    "direct-reward RL, stock phrases": (measures(3.2, 0.625, 0.110, 0.0), ("near-empty", "length", "relevance")),
    "direct-reward RL, empty answers": (measures(0.0, 1.0, 0.0, 0.0), ("near-empty", "length", "relevance")),
    "a looping policy": (measures(30.0, 0.0, 0.5, 0.45), ("repeated 3-grams",)),
    "a refusing policy": (measures(14.0, 0.0, 0.45, 0.03, refusals=0.3), ("refusals",)),
    # E20: published by the gate before this guard; like rate 0.097 -> 0.040 (base unfinished 0.64)
    "E20 rlhb-midcut on example users": (measures(34.0, 0.0, 0.551, 0.046, unfinished=0.88), ("mid-sentence",)),
    "E15 trained on inverted feedback": (measures(36.2, 0.0, 0.582, 0.028, unfinished=0.94), ("mid-sentence",)),
}


@pytest.mark.parametrize("name", HEALTHY)
def test_default_bounds_pass_the_healthy_measured_runs(name):
    metrics, reasons = compare_behavior(BASE, HEALTHY[name], GateConfig())
    assert reasons == [] and metrics["length_drop"] > 0.4  # much shorter, and still fine


@pytest.mark.parametrize("name", HACKED)
def test_default_bounds_block_the_hacked_runs(name):
    candidate, guards = HACKED[name]
    _, reasons = compare_behavior(BASE, candidate, GateConfig())
    assert len(reasons) == len(guards)
    for guard in guards:
        assert any(guard in r for r in reasons), (guard, reasons)


# The full demo's gate: 64 answers, near-empty bound 0.04 (rlhb.demo.config.GATE_NEAR_EMPTY_INCREASE). Near-empty
# answers of 64, parent -> candidate, in saved runs (bench/demo-results/); the evaluation's 176 answers beside them.
DEMO_GATE = GateConfig(max_near_empty_increase=0.04)
GATE_64_NEAR_EMPTY = {
    "E26 thorough, evaluation 2 -> 11 of 176": (1, 4, True),
    "E41 concise, LM-feature D, evaluation 1 -> 13": (1, 4, True),
    "E37 concise, kl_coef 0.02, evaluation 1 -> 16": (0, 6, True),
    "E25 concise seed 1, evaluation 1 -> 4": (1, 2, False),
    "E25 thorough, evaluation 1 -> 2": (1, 1, False),
    "E39 thorough, evaluation 1 -> 0": (1, 0, False),
}


@pytest.mark.parametrize("name", GATE_64_NEAR_EMPTY)
def test_the_demo_gate_blocks_three_more_near_empty_answers_in_64_and_the_library_default_does_not(name):
    parent_count, candidate_count, blocked = GATE_64_NEAR_EMPTY[name]
    parent = measures(28.0, parent_count / 64, 0.6)
    candidate = measures(14.0, candidate_count / 64, 0.6)
    _, reasons = compare_behavior(parent, candidate, DEMO_GATE)
    assert bool(reasons) is blocked and all("near-empty" in r and "(bound +0.04)" in r for r in reasons)
    assert compare_behavior(parent, candidate, GateConfig())[1] == []  # 0.10: the 16-answer library default


def test_a_reason_names_the_guard_both_numbers_and_the_bound():
    _, reasons = compare_behavior(BASE, HACKED["direct-reward RL, stock phrases"][0], GateConfig())
    assert reasons == [
        "behavior guard: near-empty answers (< 4 words) 0.01 -> 0.62 (bound +0.10)",
        "behavior guard: mean answer length 28.5 -> 3.2 words (-89%, bound -60%)",
        "behavior guard: relevance to the question 0.59 -> 0.11 (-81%, bound -25%)",
    ]


def test_a_candidate_that_stops_mid_sentence_more_often_is_blocked_and_one_that_finishes_more_often_is_not():
    parent = measures(28.0, 0.0, 0.6, unfinished=0.6)
    _, reasons = compare_behavior(parent, measures(30.0, 0.0, 0.6, unfinished=0.81), GateConfig())
    assert reasons == ["behavior guard: answers stopped mid-sentence 0.60 -> 0.81 (bound +0.20)"]
    assert compare_behavior(parent, measures(30.0, 0.0, 0.6, unfinished=0.8), GateConfig())[1] == []  # at the bound
    assert compare_behavior(parent, measures(12.0, 0.0, 0.6, unfinished=0.0), GateConfig())[1] == []


def test_relevance_near_zero_has_nothing_to_lose():
    """A parent whose answers are unrelated to the questions (MiniLM cosine < 0.2): a relative
    drop there is noise, not a lost topic."""
    metrics, reasons = compare_behavior(measures(12, 0, 0.05), measures(12, 0, 0.03), GateConfig())
    assert reasons == [] and metrics["relevance_drop"] == pytest.approx(0.1)


def test_the_guard_answers_under_the_served_sentence_not_the_records_own(tmp_path, tiny_model_dir, heldout):
    """E24: a candidate that answered well under the held-out records' own sentences and badly under the
    served one passed the gate. Here one is trained to say nothing under the served sentence and a full
    answer under the sentence the records were logged with: only the served reading blocks it."""
    logged = "Few users viewed this answer, and most of them disliked it."
    records = [r.model_copy(update={"behavior_prompt": logged}) for r in heldout]
    two_faced = write_trained_adapter(
        tiny_model_dir,
        tmp_path,
        "two-faced",
        [row for q in TRAIN_QUESTIONS for row in ((q, BEHAVIOR, ""), (q, logged, "Sure, here are the steps."))],
        steps=400,
        lr=5e-3,  # a short answer and many steps: the tiny model then tells the two sentences apart
        target_modules=SFT_MODULES,
    )
    candidate = AdapterVersion(name="two-faced", id=1, path=str(two_faced))
    own = evaluate(
        candidate, None, str(tiny_model_dir), records, GUARD_ONLY.model_copy(update={"prompt_behavior": "record"})
    )
    served = evaluate(candidate, None, str(tiny_model_dir), records, GUARD_ONLY, served_behavior=BEHAVIOR)
    assert own.metrics["near_empty_share"] < 0.5 and "near-empty" not in own.reason
    assert served.metrics["near_empty_share"] > 0.5 and "near-empty answers" in served.reason
    # without a served sentence given, the gate infers the encoding's most preferred one: the same here
    assert evaluate(candidate, None, str(tiny_model_dir), records, GUARD_ONLY).metrics == served.metrics


def test_guard_prompts_are_distinct_questions_under_one_sentence_each_answered_k_times():
    records = [record(i, t, bool(i % 2)) for i, t in enumerate(["bake bread", "bake bread", "tie a knot", "brew tea"])]
    records[1] = records[1].model_copy(update={"behavior_prompt": "Users liked this answer at a low rate."})
    cfg = GateConfig(max_prompts=2, answers_per_prompt=3)
    served = guard_prompts(records, cfg, "served sentence")
    assert (
        served == [("How do I bake bread?", "served sentence")] * 3 + [("How do I tie a knot?", "served sentence")] * 3
    )
    own = guard_prompts(records, cfg.model_copy(update={"prompt_behavior": "record"}))
    assert own == [("How do I bake bread?", BEHAVIOR)] * 3 + [("How do I bake bread?", records[1].behavior_prompt)] * 3
    assert guard_prompts(records, cfg)[0][1] == BEHAVIOR  # inferred: the default encoding's most preferred
    with pytest.raises(ValueError, match="answers_per_prompt must be >= 1"):
        GateConfig(answers_per_prompt=0)


def test_the_guard_samples_at_its_own_temperature_and_the_kl_check_stays_at_one(tmp_path, tiny_model_dir, heldout):
    """``guard_temperature`` (the demo: the serving temperature) changes the guard's answers, not the KL check's."""
    near = write_test_adapter(tiny_model_dir, tmp_path, "near", seed=2, scale=0.01)
    candidate = AdapterVersion(name="near", id=1, path=str(near))
    hot = evaluate(candidate, None, str(tiny_model_dir), heldout, GUARD)
    cold = evaluate(candidate, None, str(tiny_model_dir), heldout, GUARD.model_copy(update={"guard_temperature": 0.05}))
    assert cold.metrics["kl_token"] == hot.metrics["kl_token"]  # same answers for the KL check
    # near-greedy, the random tiny model's answers are empty (its argmax is the end of the answer); at 1 they are not
    assert cold.metrics["mean_words_parent"] == 0 and cold.metrics["near_empty_share_parent"] == 1.0
    assert hot.metrics["mean_words_parent"] > 5 and hot.metrics["near_empty_share_parent"] < 0.5
    with pytest.raises(ValueError, match="guard_temperature must be in"):
        GateConfig(guard_temperature=0)
