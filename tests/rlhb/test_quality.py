"""Quality measures (MiniLM relevance, repetition, length) and the like-rate statistics."""

from __future__ import annotations

import pytest

from rlhb.evaluation.quality import (
    guards_against_base,
    paired_guard_intervals,
    quality_report,
    relevance_scores,
    repetition_and_length,
)
from rlhb.evaluation.stats import compare_to_base, power_at_n, required_n_per_arm, wilson_interval
from rlhb.evaluation.text import ends_cleanly, repeated_ngram_rate, topic_overlap


def test_repeated_ngram_rate():
    assert repeated_ngram_rate("the cat sat on the mat") == 0.0
    assert repeated_ngram_rate("the cat sat the cat sat the cat sat") > 0.5
    assert repeated_ngram_rate("") == 0.0


def test_ends_cleanly_and_topic_overlap():
    assert ends_cleanly("It is blue.") and ends_cleanly('He said "yes!"') and ends_cleanly("```\ncode\n```")
    assert not ends_cleanly("It is blue and") and not ends_cleanly("")
    assert topic_overlap("What is thermodynamics?", "Thermodynamic laws govern heat.") == 1.0
    assert topic_overlap("How are you?", "Fine.") is None


def test_relevance_ranks_on_topic_answers_higher():
    q = ["What is the capital of France?", "What is the capital of France?"]
    a = ["Paris is the capital of France.", "Bananas are yellow fruit rich in potassium."]
    on, off = relevance_scores(q, a)
    assert on > off + 0.3
    assert relevance_scores(["x?"], [""]) == [0.0]
    with pytest.raises(ValueError, match="questions but"):
        relevance_scores(["a"], [])


def test_quality_report_counts_degenerate_answers():
    answers = ["Paris is the capital of France.", "no no no no no no no no", "The capital of France is"]
    report = quality_report(["What is the capital of France?"] * 3, answers)
    assert report.n == 3
    assert report.repetitive_share == pytest.approx(1 / 3)
    assert report.cut_off_share == pytest.approx(2 / 3)
    assert 0 < report.relevance < 1
    assert repetition_and_length(["One two three four five."])["median_words"] == 5


def test_the_text_measures_and_relevance_have_one_copy_in_core():
    """The trainer's gate (behavior guard) measures answers with these very functions."""
    import core.relevance
    import core.text_measures
    import rlhb.evaluation.quality as quality
    import rlhb.evaluation.text as text

    assert text.repeated_ngram_rate is quality.repeated_ngram_rate is core.text_measures.repeated_ngram_rate
    assert text.words is core.text_measures.words and text.ends_cleanly is core.text_measures.ends_cleanly
    assert relevance_scores is core.relevance.relevance_scores


def test_wilson_interval_matches_reference_values():
    # Reference: Wilson 95% interval for 30/100 is [0.2189, 0.3958] (e.g. statsmodels proportion_confint).
    p = wilson_interval(30, 100)
    assert p.rate == 0.3
    assert p.low == pytest.approx(0.2189, abs=1e-3) and p.high == pytest.approx(0.3958, abs=1e-3)
    assert wilson_interval(0, 0).high == 1.0
    assert wilson_interval(0, 20).low == 0.0
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_compare_to_base_detects_a_real_lift_and_not_noise():
    big = compare_to_base(120, 400, 80, 400)  # 0.30 vs 0.20
    assert big.significant and big.lift == pytest.approx(0.10)
    assert big.p_fisher_one_sided < 0.01 and big.p_z_one_sided < 0.01
    same = compare_to_base(81, 400, 80, 400)
    assert not same.significant and same.p_z_one_sided > 0.4
    worse = compare_to_base(60, 400, 80, 400)
    assert not worse.significant and worse.lift < 0


def test_power_analysis_is_consistent():
    n = required_n_per_arm(0.24, 0.34)
    assert 200 < n < 320
    assert power_at_n(0.24, 0.34, n) == pytest.approx(0.8, abs=0.02)
    assert power_at_n(0.24, 0.34, 2 * n) > 0.95
    with pytest.raises(ValueError, match="two different rates"):
        required_n_per_arm(0.3, 0.3)


def _quality(relevance=0.55, rep=0.03, near_empty=0.02):
    return {"relevance": relevance, "repeated_ngram_rate": rep, "near_empty_share": near_empty}


def test_guards_against_base_hold_the_issues_bar():
    base = _quality()
    assert guards_against_base(_quality(relevance=0.526, rep=0.017, near_empty=0.02), base)["clean"]  # -4.4%
    worse = guards_against_base(_quality(relevance=0.52, rep=0.0316, near_empty=0.03), base)
    assert not worse["clean"]
    assert [f.split()[0] for f in worse["failed"]] == ["relevance", "repetition", "near-empty"]
    assert worse["relevance_change"] == pytest.approx(-0.03 / 0.55)
    assert worse["near_empty_change"] == pytest.approx(0.01)
    assert guards_against_base(_quality(rep=0.0314), base)["clean"]  # +4.7% repetition is inside 5%
    assert not guards_against_base(_quality(rep=0.001), _quality(rep=0.0))["clean"]
    no_relevance = guards_against_base(_quality(relevance=None), base)
    assert no_relevance["clean"] and "relevance_change" not in no_relevance


LOOP = "the cat sat on the mat the cat sat on the mat the cat sat on the mat."


def test_paired_guard_intervals_tell_a_real_move_from_noise():
    questions = [f"What is fact number {i} about cats?" for i in range(40)]
    base = [f"Cats sleep a lot, fact {i} says." if i % 8 else LOOP for i in range(40)]  # 5 looping answers
    same = paired_guard_intervals(questions, base, base, relevance=False, resamples=500)
    assert same["repetition_change"] == [0.0, 0.0] and same["near_empty"] == {"base": 0, "candidate": 0}
    looping = [LOOP if i % 2 else a for i, a in enumerate(base)]  # 20 looping answers: a real move
    worse = paired_guard_intervals(questions, base, looping, relevance=False, resamples=500)
    assert worse["pairs"] == 40 and worse["repetition_change"][0] > 0.5
    one_more = [LOOP if i == 1 else a for i, a in enumerate(base)]  # +20% from one answer: noise at n=40
    low, high = paired_guard_intervals(questions, base, one_more, relevance=False, resamples=500)["repetition_change"]
    assert low < 0.05 < 0.2 < high
    clean = [f"Cats sleep a lot, fact {i} says." for i in range(40)]
    assert paired_guard_intervals(questions, clean, base, relevance=False)["repetition_change"] is None  # no base rate
    with pytest.raises(ValueError, match="pair up"):
        paired_guard_intervals(questions, base, base[:-1])


def test_paired_guard_intervals_measure_relevance_and_near_empty_answers():
    questions = [f"What is the capital of country {i}, France or Spain?" for i in range(12)]
    on_topic = [f"The capital of France is Paris, answer {i}." for i in range(12)]
    off_topic = ["Bananas are yellow fruit rich in potassium." for _ in range(11)] + ["Ok."]
    out = paired_guard_intervals(questions, on_topic, off_topic, resamples=500)
    assert out["relevance_change"][1] < -0.3 and out["near_empty"] == {"base": 0, "candidate": 1}
