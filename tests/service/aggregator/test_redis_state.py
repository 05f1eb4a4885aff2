"""The Lua scripts on the real Redis: atomic dedupe + count, pending joins, leases, expiry.

A randomized stream is applied in random batches and compared with the in-memory
reference fold (the semantics the scripts must implement)."""

from __future__ import annotations

import random

from schemas import FeedbackEvent, Impression
from service.aggregator.fold import Fold
from service.aggregator.redis_state import AggregatorStore


def _imp(iid: str) -> Impression:
    return Impression(impression_id=iid, query="q", behavior="b", response="r", adapter_version="v1")


def _ev(eid: str, iid: str, kind: str = "like", value: float = 1.0) -> tuple[FeedbackEvent, bytes]:
    ev = FeedbackEvent(event_id=eid, impression_id=iid, kind=kind, value=value)
    return ev, ev.model_dump_json().encode()


def test_event_before_impression_waits_then_counts_once(redis_client, redis_prefix):
    store = AggregatorStore(redis_client, redis_prefix)
    assert store.apply_events([_ev("e1", "i1"), _ev("e1", "i1"), _ev("e2", "i1", "view")], 1.0, 100) == (0, [])
    assert store.pending_count() == 2 and store.counts("i1") == {}
    assert store.store_impressions([_imp("i1")], 2.0) == 2
    assert store.counts("i1") == {"like": 1.0, "view": 1.0}
    assert store.pending_count() == 0
    # Re-delivery of the same events (a crash before the offset commit) changes nothing.
    assert store.apply_events([_ev("e1", "i1"), _ev("e2", "i1", "view")], 3.0, 100) == (0, [])
    assert store.apply_events([_ev("e3", "i1", "dwell", 2.5)], 3.0, 100) == (1, [])
    assert store.counts("i1") == {"like": 1.0, "view": 1.0, "dwell": 2.5}


def test_pending_store_is_bounded(redis_client, redis_prefix):
    store = AggregatorStore(redis_client, redis_prefix)
    counted, refused = store.apply_events([_ev(f"e{i}", f"i{i}") for i in range(5)], 1.0, pending_max=3)
    assert (counted, refused) == (0, [3, 4])
    assert store.pending_count() == 3


def test_coalescing_claim_lease_and_release(redis_client, redis_prefix):
    store = AggregatorStore(redis_client, redis_prefix)
    store.store_impressions([_imp("i1"), _imp("i2")], 0.0)
    store.apply_events([_ev("a", "i1"), _ev("b", "i1"), _ev("c", "i2")], 10.0, 100)
    store.apply_events([_ev("d", "i1")], 10.1, 100)
    assert store.claim_dirty(10.15, coalesce_s=0.2, lease_s=5) == []  # burst still coalescing
    assert sorted(store.claim_dirty(10.3, coalesce_s=0.2, lease_s=5)) == ["i1", "i2"]  # one claim per impression
    assert store.claim_dirty(10.4, coalesce_s=0.2, lease_s=5) == []  # leased
    store.release(["i2"], 10.5)
    # i1's publisher died: its lease expires and someone else re-publishes it.
    assert store.claim_dirty(15.31, coalesce_s=0.2, lease_s=5) == ["i1"]
    store.release(["i1"], 15.4)
    assert store.backlog() == 0
    store.apply_events([_ev("e", "i1")], 20.0, 100)
    assert store.claim_dirty(21.0, coalesce_s=0.2, lease_s=5) == ["i1"]


def test_expired_pending_are_listed_then_dropped(redis_client, redis_prefix):
    store = AggregatorStore(redis_client, redis_prefix)
    store.apply_events([_ev("old", "i1"), _ev("x", "i2")], 100.0, 100)
    store.apply_events([_ev("new", "i1")], 200.0, 100)
    expired = store.expired_pending(cutoff=150.0)
    assert set(expired) == {"i1", "i2"}
    assert set(expired["i1"]) == {"old"} and expired["i1"]["old"][0] == 100.0
    assert '"event_id":"old"' in expired["i1"]["old"][1]
    for iid, entries in expired.items():
        store.drop_pending(iid, list(entries), 150.0)
    assert store.pending_count() == 1
    assert store.expired_pending(cutoff=150.0) == {}
    store.store_impressions([_imp("i1")], 300.0)
    assert store.counts("i1") == {"like": 1.0}


def test_random_stream_in_random_batches_matches_the_reference_fold(redis_client, redis_prefix):
    rng = random.Random(7)
    iids = [f"i{k}" for k in range(40)]
    items: list = [_imp(i) for i in iids[:35]]  # 5 impressions never arrive: their events stay pending
    for n in range(1500):
        kind = rng.choice(["view", "click", "like", "dislike", "dwell"])
        ev, _ = _ev(f"e{n}", rng.choice(iids), kind, rng.choice([1.0, 2.5]) if kind == "dwell" else 1.0)
        items.append(ev)
        if rng.random() < 0.2:
            items.append(ev)  # duplicate delivery
    rng.shuffle(items)
    store = AggregatorStore(redis_client, redis_prefix)
    i = 0
    while i < len(items):
        chunk = items[i : i + rng.randint(1, 200)]
        i += len(chunk)
        store.store_impressions([x for x in chunk if isinstance(x, Impression)], float(i))
        store.apply_events(
            [(x, x.model_dump_json().encode()) for x in chunk if isinstance(x, FeedbackEvent)], float(i), 10_000
        )
    ref = Fold().apply_all(items)
    assert store.all_counts() == ref.counts
    assert store.pending_count() == sum(len(p) for p in ref.pending.values())
