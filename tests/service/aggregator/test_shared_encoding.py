"""The encoding shared through Redis: written by the aggregator, refitted on recent records,
read back by the API/trainer with load_encoding."""

from __future__ import annotations

from core.behavior.encoding import PaperEncoding, RatesEncoding, most_preferred_sentence, prior_edges
from core.behavior.encoding_store import load_encoding
from core.settings import AggregatorSettings
from schemas import FeedbackEvent, Impression
from service.aggregator.consumer import Aggregator, ensure_encoding


def _settings(redis_prefix: str, **kw) -> AggregatorSettings:
    return AggregatorSettings(redis_prefix=redis_prefix, edges_min_records=10, **kw)


def test_settings_encoding_is_stored_for_every_reader(redis_client, redis_prefix):
    assert load_encoding(redis_client, redis_prefix) == RatesEncoding()  # nothing stored yet: the default
    enc = ensure_encoding(redis_client, _settings(redis_prefix, encoding="paper", num_buckets=4, caps={"view": 9}))
    assert enc == PaperEncoding(num_buckets=4, caps={"view": 9.0})
    assert load_encoding(redis_client, redis_prefix) == enc
    # Switching the deployment to rates replaces it.
    enc = ensure_encoding(redis_client, _settings(redis_prefix, rates="ctr,like_rate,dislike_rate"))
    assert load_encoding(redis_client, redis_prefix) == enc
    assert most_preferred_sentence(enc) == (
        "Users clicked this answer at a high rate, liked it at a high rate and disliked it at a low rate."
    )


def test_refit_edges_on_recent_records_and_keep_them_across_restarts(redis_client, redis_prefix):
    settings = _settings(redis_prefix)
    agg = Aggregator(settings, redis_client, producer=None, consumer=None)
    assert agg.encoding.edges == prior_edges()
    store = agg.store
    store.store_impressions(
        [
            Impression(impression_id=f"i{k}", query="q", behavior="b", response="r", adapter_version="v")
            for k in range(20)
        ],
        1.0,
    )
    events = []
    for k in range(20):  # like rate k/20 per impression, no dislikes
        events += [(FeedbackEvent(event_id=f"v{k}-{j}", impression_id=f"i{k}", kind="view"), b"") for j in range(20)]
        events += [(FeedbackEvent(event_id=f"l{k}-{j}", impression_id=f"i{k}", kind="like"), b"") for j in range(k)]
    store.apply_events(events, 2.0, 10_000)
    store.release([f"i{k}" for k in range(20)], 3.0)  # as if their records were published
    agg.refit_edges(force=True)
    fitted = load_encoding(redis_client, redis_prefix)
    assert fitted.edges.fitted_on == 20
    lo, hi = fitted.edges.edges["like_rate"]
    assert 0.3 < lo < hi < 0.7 and fitted.edges.edges["dislike_rate"] == (0.0, 0.0)
    assert agg.encoding == fitted
    # A restarted member keeps the fitted edges (same rates and levels).
    assert ensure_encoding(redis_client, settings) == fitted
