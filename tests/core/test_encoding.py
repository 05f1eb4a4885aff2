"""The behavior encoding: exact values and properties (hypothesis)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.behavior.encoding import (
    INDICATORS,
    PaperEncoding,
    RateEdges,
    RatesEncoding,
    all_patterns,
    bucket,
    encoding_from_json,
    encoding_to_json,
    fit_rate_edges,
    least_preferred,
    most_preferred,
    most_preferred_sentence,
    opposite,
    prior_edges,
    quantile,
    shaped_reward,
    swap_candidates,
)

counts_st = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
record_st = st.fixed_dictionaries({"view": counts_st, "click": counts_st, "like": counts_st, "dislike": counts_st})


# --------------------------------------------------------------------------- paper encoding, exact values
def test_bucket_exact_values_log1p_equal_width():
    # cap 100: upper edge log(101) = 4.615; width 0.923 per bucket with N=5.
    assert bucket(0, 100, 5) == 0
    assert bucket(1, 100, 5) == 0  # log 2 = 0.69 < 0.92
    assert bucket(2, 100, 5) == 1  # log 3 = 1.10
    assert bucket(6, 100, 5) == 2  # log 7 = 1.95 in [1.85, 2.77)
    assert bucket(15, 100, 5) == 3  # log 16 = 2.77 in [2.77, 3.69)
    assert bucket(40, 100, 5) == 4
    assert bucket(100, 100, 5) == 4
    assert bucket(10_000, 100, 5) == 4  # above the cap: top bucket


def test_paper_encode_and_render_exact_sentence():
    enc = PaperEncoding()
    buckets = enc.encode({"view": 40, "click": 2, "like": 3, "dislike": 0})
    assert buckets == {"view": 4, "click": 1, "like": 2, "dislike": 0}
    assert enc.render(buckets) == (
        "Users viewed this answer very often, clicked it rarely, liked it sometimes and disliked it very rarely."
    )
    assert most_preferred_sentence(enc) == (
        "Users viewed this answer very often, clicked it very often, liked it very often and disliked it very rarely."
    )


def test_paper_caps_are_configurable_per_indicator():
    assert PaperEncoding(caps={"like": 3}).encode({"like": 3})["like"] == 4
    assert PaperEncoding().encode({"like": 3})["like"] == 2
    with pytest.raises(ValueError, match="caps must be positive"):
        PaperEncoding(caps={"like": 0})


def test_extension_indicators_come_from_the_table():
    enc = PaperEncoding(indicators=("view", "like", "dislike", "dwell"), num_buckets=3)
    b = enc.encode({"view": 1, "dwell": 600})
    assert b["dwell"] == 2
    assert enc.render(b).endswith("and lingered on it often.")
    with pytest.raises(ValueError, match="add them to INDICATORS"):
        PaperEncoding(indicators=("view", "scroll"))


def test_shaped_reward_exact_and_zero_denominator():
    assert shaped_reward({"view": 3, "click": 1, "like": 2, "dislike": 1}) == 0.25
    assert shaped_reward({"like": 5}) == 0.0
    assert shaped_reward({}) == 0.0
    assert shaped_reward({"view": 1, "like": 4}) == 1.0  # clipped (likes without views)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["like", "view", "dislike"])
def test_shaped_reward_refuses_non_finite_counts(kind, bad):
    # NaN used to clip to +1.0, the maximum reward (min(1.0, nan) is 1.0).
    with pytest.raises(ValueError, match="finite"):
        shaped_reward({"view": 3.0, "like": 1.0, kind: bad})
    with pytest.raises(ValueError, match="no defined reward"):
        shaped_reward({"view": 1.0, "like": 1.7e308, "dislike": -1.7e308})


# --------------------------------------------------------------------------- rates encoding, exact values
def test_rates_default_sentence_and_levels():
    enc = RatesEncoding()
    assert most_preferred_sentence() == "Users liked this answer at a high rate and disliked it at a low rate."
    assert most_preferred() == {"like_rate": 2, "dislike_rate": 0}
    assert least_preferred() == {"like_rate": 0, "dislike_rate": 2}
    # priors: like (0.05, 0.2], dislike (0.02, 0.1]
    assert enc.encode({"view": 10, "like": 3, "dislike": 0}) == {"like_rate": 2, "dislike_rate": 0}
    assert enc.encode({"view": 10, "like": 1, "dislike": 1}) == {"like_rate": 1, "dislike_rate": 1}
    assert enc.encode({"view": 10, "like": 2}) == {"like_rate": 1, "dislike_rate": 0}  # 0.2 is an edge: lower
    assert enc.render({"like_rate": 1, "dislike_rate": 2}) == (
        "Users liked this answer at a medium rate and disliked it at a high rate."
    )


def test_rates_zero_views_take_the_lowest_level():
    assert RatesEncoding().encode({"like": 5, "dislike": 5}) == {"like_rate": 0, "dislike_rate": 0}


def test_rates_with_ctr_render_three_clauses():
    enc = RatesEncoding(rates=("ctr", "like_rate", "dislike_rate"))
    assert enc.render({"ctr": 2, "like_rate": 2, "dislike_rate": 0}) == (
        "Users clicked this answer at a high rate, liked it at a high rate and disliked it at a low rate."
    )


def test_quantile_matches_numpy_linear():
    assert quantile([0, 1, 2, 3], 1 / 3) == pytest.approx(1.0)
    assert quantile([0, 10], 0.25) == 2.5
    assert quantile([7], 0.5) == 7


def test_fit_edges_are_quantiles_and_ties_keep_zero_low():
    records = [{"view": 10, "like": k, "dislike": 0} for k in range(10)]  # like rates 0.0 .. 0.9
    edges = fit_rate_edges(records, levels=3, min_records=5)
    assert edges.fitted_on == 10
    assert edges.edges["like_rate"] == pytest.approx((0.3, 0.6))
    assert edges.edges["dislike_rate"] == (0.0, 0.0)
    enc = RatesEncoding(edges=edges)
    assert enc.encode({"view": 10, "like": 9, "dislike": 0}) == {"like_rate": 2, "dislike_rate": 0}
    assert enc.encode({"view": 10, "like": 0, "dislike": 1}) == {"like_rate": 0, "dislike_rate": 2}
    # The most-preferred pattern occurs in the records it was fitted on.
    assert sum(enc.encode(r) == most_preferred(enc) for r in records) == 3


def test_fit_edges_fall_back_to_priors_with_few_records_and_skip_unviewed():
    records = [{"like": 3}] * 100 + [{"view": 1, "like": 1}] * 3
    assert fit_rate_edges(records, min_records=20) == prior_edges()


def test_edges_and_encodings_roundtrip_through_json():
    edges = RateEdges(edges={"like_rate": (0.1, 0.4), "dislike_rate": (0.0, 0.05)}, fitted_on=12)
    assert RateEdges.from_json(edges.to_json()) == edges
    for enc in (RatesEncoding(edges=edges), PaperEncoding(num_buckets=4, caps={"view": 9.0})):
        back = encoding_from_json(encoding_to_json(enc))
        assert back == enc
        assert json.loads(encoding_to_json(back)) == json.loads(encoding_to_json(enc))


def test_bad_edges_are_rejected_with_what_to_do():
    with pytest.raises(ValueError, match="refit them"):
        RatesEncoding(edges=RateEdges(edges={"like_rate": (0.5,), "dislike_rate": (0.1, 0.2)}))


# --------------------------------------------------------------------------- pattern helpers
def test_all_patterns_opposite_and_swaps():
    assert len(all_patterns()) == 9
    assert len(all_patterns(PaperEncoding())) == 5**4
    assert opposite({"like_rate": 2, "dislike_rate": 0}) == {"like_rate": 0, "dislike_rate": 2}
    swaps = swap_candidates({"like_rate": 2, "dislike_rate": 0})
    assert len(swaps) == 8 and {"like_rate": 2, "dislike_rate": 0} not in swaps
    paper = PaperEncoding()
    b = {"view": 1, "click": 1, "like": 3, "dislike": 0}
    paper_swaps = swap_candidates(b, paper)
    # A swap never differs in exposure only: like or dislike always changes.
    assert all((s["like"], s["dislike"]) != (3, 0) for s in paper_swaps)
    assert len(paper_swaps) == 5**4 - 5**2


# --------------------------------------------------------------------------- properties
@given(x=counts_st, y=counts_st, n=st.integers(2, 20), cap=st.floats(0.5, 1e4))
def test_buckets_monotone_and_in_range(x, y, n, cap):
    lo, hi = sorted((x, y))
    assert 0 <= bucket(lo, cap, n) <= bucket(hi, cap, n) <= n - 1


int_counts = st.integers(0, 10_000)


@given(view=int_counts, click=int_counts, like=int_counts, dislike=int_counts)
def test_reward_bounded_and_sign_follows_likes_minus_dislikes(view, click, like, dislike):
    r = shaped_reward({"view": view, "click": click, "like": like, "dislike": dislike})
    assert -1.0 <= r <= 1.0
    if view + click == 0:
        assert r == 0.0
    else:
        assert (r > 0) - (r < 0) == (like > dislike) - (like < dislike)


@settings(max_examples=50)
@given(records=st.lists(record_st, min_size=0, max_size=60), rec=record_st, more=counts_st)
def test_rates_levels_monotone_in_likes_and_in_range(records, rec, more):
    enc = RatesEncoding(edges=fit_rate_edges(records, min_records=5))
    base = enc.encode(rec)
    bumped = enc.encode({**rec, "like": rec["like"] + more, "dislike": rec["dislike"] + more})
    for k in enc.keys():
        assert 0 <= base[k] <= 2
        assert bumped[k] >= base[k]


@given(rec=record_st, other=record_st)
def test_rendering_is_a_function_of_the_buckets_alone(rec, other):
    for enc in (PaperEncoding(), RatesEncoding()):
        a, b = enc.encode(rec), enc.encode(other)
        assert (enc.render(a) == enc.render(b)) == (a == b)


def test_every_pattern_renders_to_a_distinct_sentence():
    for enc in (
        PaperEncoding(),
        RatesEncoding(),
        PaperEncoding(num_buckets=7),
        RatesEncoding(num_levels=4, edges=None),
    ):
        sentences = {enc.render(p) for p in all_patterns(enc)}
        assert len(sentences) == len(all_patterns(enc))


def test_indicator_table_covers_every_feedback_kind():
    from schemas import FeedbackKind

    assert {k.value for k in FeedbackKind} <= set(INDICATORS)
