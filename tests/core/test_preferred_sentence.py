"""One most preferred sentence: the API serves it and the trainer trains toward it, from the
same stored encoding, and polarity comes from the indicator tables (not from key names)."""

from __future__ import annotations

import pytest

from core.behavior.encoding import (
    RatesEncoding,
    fit_rate_edges,
    infer_encoding,
    is_positive,
    least_preferred_sentence,
    make_encoding,
    most_preferred_sentence,
)
from core.behavior.encoding_store import load_encoding, save_encoding
from core.settings import ApiSettings
from schemas import BehaviorRecord
from service.api.app import default_behavior
from trainer.algorithms.conditioning import behavior_chooser
from trainer.records import BehaviorPool


def _records(enc) -> list[BehaviorRecord]:
    """Records as the aggregator writes them: buckets and sentence from ``enc``."""
    out = []
    for i, counts in enumerate(
        [{"view": 10, "like": 6, "click": 2}, {"view": 10, "dislike": 3, "requery": 2}, {"view": 4, "like": 1}]
    ):
        buckets = enc.encode(counts)
        out.append(
            BehaviorRecord(
                impression_id=f"i{i}",
                query="q",
                response="a",
                behavior_prompt="",
                adapter_version="base",
                counts=counts,
                buckets=buckets,
                behavior_text=enc.render(buckets),
                reward=0.0,
                encoding=enc.name,
            )
        )
    return out


def test_polarity_comes_from_the_indicator_tables():
    assert is_positive("like") and is_positive("like_rate") and is_positive("ctr")
    assert not is_positive("dislike") and not is_positive("dislike_rate")
    # The old substring rule ("like" in key) missed this one: re-asking is bad news.
    assert not is_positive("requery_rate") and not is_positive("requery")
    with pytest.raises(KeyError, match="unknown behavior key"):
        is_positive("applause")


def test_api_and_trainer_give_the_same_sentence_for_the_stored_encoding(redis_client, redis_prefix):
    # A deployment whose aggregator renders three rates in four levels (not the API's configured default).
    rates = ("ctr", "like_rate", "requery_rate")
    history = [
        {"view": 10, "click": c, "like": lk, "requery": rq}
        for c, lk, rq in zip(range(10), range(10), range(10), strict=True)
    ]
    fitted = RatesEncoding(rates=rates, num_levels=4, edges=fit_rate_edges(history, rates, 4, min_records=5))
    save_encoding(redis_client, redis_prefix, fitted)
    settings = ApiSettings(dev_mode=True, redis_prefix=redis_prefix, behavior_encoding="rates")

    served = default_behavior(settings, redis_client)
    stored = load_encoding(redis_client, redis_prefix)
    trained = BehaviorPool(_records(fitted), stored).most_preferred()
    chosen = behavior_chooser(_records(fitted), "preferred", stored)(_records(fitted)[0])

    assert served == trained == chosen == most_preferred_sentence(fitted)
    assert served == (
        "Users clicked this answer at a very high rate, liked it at a very high rate and "
        "re-asked after it at a very low rate."
    )
    # Before anything is stored the API falls back to its configured encoding, and says the same as the trainer would.
    redis_client.delete(redis_prefix + "encoding")
    assert default_behavior(settings, redis_client) == most_preferred_sentence(make_encoding("rates"))


def test_offline_records_infer_the_encoding_that_wrote_them():
    enc = RatesEncoding(rates=("dislike_rate", "like_rate", "requery_rate"))
    records = _records(enc)
    inferred = infer_encoding(records)
    assert inferred.keys() == enc.keys() and inferred.levels("like_rate") == 3
    pool = BehaviorPool(records)
    assert pool.most_preferred() == most_preferred_sentence(enc)
    assert pool.least_preferred() == least_preferred_sentence(enc)
    assert "re-asked after it at a low rate" in pool.most_preferred()
    paper = make_encoding("paper")
    assert BehaviorPool(_records(paper)).most_preferred() == most_preferred_sentence(paper)
