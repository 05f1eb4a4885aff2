"""Offsets stored in Redis vs a log that was recreated (service/aggregator/incarnation.py).

The embedded broker keeps topics in memory: a restart of `rlhb up` gives new, empty topics
while Redis (append-only file) still holds offsets into the old ones. Real processes: two
tansu brokers one after the other, the real Redis, the aggregator's own ``run``."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis as redis_lib

from core.infra.broker import EmbeddedBroker, ensure_topics
from service.aggregator.consumer import run
from service.aggregator.incarnation import forget_offsets_of_recreated_topics
from service.aggregator.redis_state import AggregatorStore, tp_key
from tests.service.aggregator.test_reliability import _imp, _like, _produce, _settings


def _topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {k: f"{k}-{tag}" for k in ("impressions", "feedback", "records", "dead_letter")}


def _json(model) -> bytes:
    return model.model_dump_json().encode()


def _run_until_counted(settings, store: AggregatorStore, want: dict, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    run(settings, stop=lambda: all(store.counts(i) == c for i, c in want.items()) or time.monotonic() > deadline)


@pytest.mark.timeout(180)
def test_new_events_on_a_restarted_embedded_broker_are_counted_not_skipped(redis_url, redis_prefix, caplog):
    caplog.set_level(logging.INFO, logger="service.aggregator")
    topics = _topics()
    store = AggregatorStore(redis_lib.Redis.from_url(redis_url, decode_responses=True), redis_prefix)
    first = EmbeddedBroker().start()
    try:
        ensure_topics(first.bootstrap, list(topics.values()), 1)
        settings = _settings(topics, first.bootstrap, redis_url, redis_prefix, "agg-recreated")
        old = [f"old-{n}" for n in range(3)]
        _produce(first.bootstrap, topics, [("impressions", i.encode(), _json(_imp(i))) for i in old])
        _produce(first.bootstrap, topics, [("feedback", i.encode(), _json(_like(f"e-{i}", i))) for i in old])
        _run_until_counted(settings, store, {i: {"like": 1.0} for i in old})
        assert store.offsets()[tp_key(topics["feedback"], 0)] == 3
    finally:
        first.stop()

    # The broker restarts: same topic names, new ids, empty logs; Redis keeps offsets 3.
    second = EmbeddedBroker().start()
    try:
        ensure_topics(second.bootstrap, list(topics.values()), 1)
        settings = _settings(topics, second.bootstrap, redis_url, redis_prefix, "agg-recreated")
        _produce(second.bootstrap, topics, [("impressions", b"new", _json(_imp("new")))])
        _produce(second.bootstrap, topics, [("feedback", b"new", _json(_like("e-new", "new")))])
        caplog.clear()
        _run_until_counted(settings, store, {"new": {"like": 1.0}})
        # Counted once (offset 0 of the new log was read, not skipped as "before offset 3").
        assert store.counts("new") == {"like": 1.0}, caplog.text
        assert store.counts("old-0") == {"like": 1.0}  # the counts of the old log are kept
        assert "was recreated" in caplog.text and f"{tp_key(topics['feedback'], 0)}=3" in caplog.text
        assert store.offsets()[tp_key(topics["feedback"], 0)] == 1

        # Same broker again: the ids match, nothing is forgotten or re-read.
        caplog.clear()
        _run_until_counted(settings, store, {"new": {"like": 1.0}}, timeout_s=3)
        assert "was recreated" not in caplog.text
        assert store.offsets()[tp_key(topics["feedback"], 0)] == 1
    finally:
        second.stop()


def test_only_the_recreated_topics_offsets_are_forgotten(redis_client, redis_prefix):
    offsets = f"{redis_prefix}agg:offsets"
    redis_client.hset(offsets, mapping={"a:0": 5, "a:1": 7, "ab:0": 9, "b:0": 4})
    assert forget_offsets_of_recreated_topics(redis_client, redis_prefix, {"a": "id-1", "b": "id-2"}) == {}
    forgotten = forget_offsets_of_recreated_topics(redis_client, redis_prefix, {"a": "id-9", "b": "id-2"})
    assert forgotten == {"a": ["a:0=5", "a:1=7"]}
    # "ab" shares a prefix with "a" but is another topic; "b" kept its id.
    assert redis_client.hgetall(offsets) == {"ab:0": "9", "b:0": "4"}
    assert redis_client.hgetall(f"{redis_prefix}agg:topic_ids") == {"a": "id-9", "b": "id-2"}
