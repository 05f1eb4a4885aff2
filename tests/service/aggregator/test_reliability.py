"""Issue 16 (reliability), on the real broker and the real Redis: poison pills become dead
letters (never a crash, never a half-written batch), a dead letter that cannot be written
holds the offsets, exactly-once survives a crash before the commit and a Redis rollback,
per-impression keys expire, and no log line carries the Redis password."""

from __future__ import annotations

import base64
import json
import logging
import signal
import time
import uuid

import pytest
import redis as redis_lib
from kafka import KafkaProducer, TopicPartition
from pydantic import SecretStr

from core.infra.broker import EmbeddedBroker, check_kafka, ensure_topics
from core.settings import AggregatorSettings
from schemas import FeedbackEvent, Impression
from service.aggregator.consumer import Aggregator, DeadLetterUndeliverable, make_clients, run
from service.aggregator.redact import RedactingFilter, redact
from service.aggregator.redis_state import AggregatorStore, tp_key
from service.aggregator.retention import MAX_EVENT_AGE_S
from tests.service.aggregator.test_pipeline import read_topic


def _imp(iid: str) -> Impression:
    return Impression(impression_id=iid, query="q", behavior="b", response="r", adapter_version="v1")


def _like(eid: str, iid: str = "i1") -> FeedbackEvent:
    return FeedbackEvent(event_id=eid, impression_id=iid, kind="like")


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _raw(eid: str, iid: str = "i1", **fields) -> bytes:
    """An event as a producer could write it straight to Kafka, past the API's checks."""
    return json.dumps({"event_id": eid, "impression_id": iid, "kind": "like", **fields}).encode()


def _settings(
    topics: dict, bootstrap: str, redis_url: str, prefix: str, group: str, client: str = "kafka-python"
) -> AggregatorSettings:
    return AggregatorSettings(
        kafka_client=client,
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        redis_prefix=prefix,
        topic_impressions=topics["impressions"],
        topic_feedback=topics["feedback"],
        topic_records=topics["records"],
        topic_dead_letter=topics["dead_letter"],
        group_id=group,
        session_timeout_ms=4000,
        max_poll_interval_ms=6000,
    )


class Member:
    """One in-process aggregator member in a consumer group, driven batch by batch."""

    def __init__(self, settings: AggregatorSettings, bootstrap: str, redis_url: str, producer=None):
        self.redis, own_producer, self.consumer = make_clients(settings, bootstrap, redis_url)
        if producer is not None:
            own_producer.close(5)
        self.producer = producer or own_producer
        self.agg = Aggregator(settings, self.redis, self.producer, self.consumer)

    def run_until(self, done, timeout_s: float = 40, commit: bool = True, settle_s: float = 0.0) -> None:
        """Process batches until ``done()`` holds (then ``settle_s`` more seconds of polling)."""
        deadline, settled = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            batch = self.consumer.poll(timeout_ms=200)
            self.agg.process(batch, commit=commit)
            if settled is None and done():
                settled = time.monotonic() + settle_s
            if settled is not None and time.monotonic() >= settled:
                return
        raise AssertionError(f"timed out after {timeout_s} s; {self.describe()}")

    def describe(self) -> str:
        """Where this member stands, for a timeout's message: a bare "timed out" under CI's load
        (stop 28, the confluent restart below) left nothing to go on."""
        parts = sorted(self.consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        try:
            end = self.consumer.end_offsets(parts)
        except Exception as err:  # noqa: BLE001 - a diagnostic must not hide the timeout
            end = {tp: f"? ({err})" for tp in parts}
        at = {f"{tp.topic.rsplit('-', 1)[-1]}[{tp.partition}]": (self.consumer.position(tp), end[tp]) for tp in parts}
        # the confluent client says whether it joined the group at all (twice under CI's load it had no partitions)
        member = self.consumer.member_id() if hasattr(self.consumer, "member_id") else "n/a"
        return (
            f"{len(parts)} partitions assigned, member id {member!r}, (position, end) {at}, "
            f"store offsets {self.agg.store.offsets()}"
        )

    def caught_up(self) -> bool:
        parts = self.consumer.assignment()
        if len(parts) < 8:  # 4 partitions of each topic; one member owns them all
            return False
        end = self.consumer.end_offsets(list(parts))
        # None: the position is not known yet (the confluent adapter answers so until the first
        # fetch of that partition, as consumer.lag() assumes): not caught up.
        positions = {tp: self.consumer.position(tp) for tp in parts}
        return all(pos is not None and pos >= end[tp] for tp, pos in positions.items())

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close(5)
        self.redis.close()


def _produce(bootstrap: str, topics: dict, msgs: list[tuple[str, bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for role, key, value in msgs:
        producer.send(topics[role], key=key, value=value, partition=0)
    producer.flush()
    producer.close(5)


# Every member-driven test runs on both consumer clients (RLHB_AGG_KAFKA_CLIENT): the
# exactly-once logic must hold whichever one reads the topics.
@pytest.fixture(params=["kafka-python", "confluent"])
def setup(request, kafka_bootstrap, unique_topics, redis_url, redis_prefix):
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = _settings(unique_topics, kafka_bootstrap, redis_url, redis_prefix, group, request.param)
    members: list[Member] = []

    def member(**kw) -> Member:
        m = Member(settings, kafka_bootstrap, redis_url, **kw)
        members.append(m)
        return m

    yield settings, member, AggregatorStore(redis_lib.Redis.from_url(redis_url, decode_responses=True), redis_prefix)
    for m in members:
        try:
            m.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


# --------------------------------------------------------------------------- item 1: poison pills
def test_overflowing_values_are_refused_before_the_script_writes_anything(redis_client, redis_prefix):
    # Two 1e308 likes summed to inf inside the script: HINCRBYFLOAT failed after the SADDs, so
    # the script raised (a crash on every restart) and the valid event after them was marked
    # seen but never counted.
    store = AggregatorStore(redis_client, redis_prefix)
    store.store_impressions([_imp("i1")], 1.0)
    huge = [FeedbackEvent.model_construct(**{**_like(e).model_dump(), "value": 1e308}) for e in ("e1", "e2")]
    batch = [(huge[0], b""), (huge[1], b""), (_like("e3"), b"")]
    assert store.apply_events(batch, 2.0, 100) == (1, [0, 1])
    assert store.counts("i1") == {"like": 1.0}
    assert redis_client.smembers(store.p + "seen:i1") == {"e3"}  # refused events are not marked seen
    assert store.apply_events(batch, 3.0, 100) == (0, [0, 1])  # a re-delivery changes nothing
    # A counter already broken in Redis (written before the checks) refuses its events too, writes nothing.
    redis_client.hset(store.p + "cnt:i1", "view", "inf")
    view = FeedbackEvent(event_id="v1", impression_id="i1", kind="view")
    done = store.apply_batch([], [view, _like("e4")], 4.0, 100)
    assert (done.counted, done.rejected) == (1, [(0, "stored counter is not a finite number")])
    assert store.counts("i1")["like"] == 2.0 and "v1" not in redis_client.smembers(store.p + "seen:i1")


def test_poison_pills_on_the_topic_become_dead_letters_and_the_member_keeps_counting(setup, kafka_bootstrap):
    settings, member, store = setup
    topics = {"impressions": settings.topic_impressions, "feedback": settings.topic_feedback}
    now = time.time()
    bad = {
        "huge-1": _raw("huge-1", value=1e308),
        "huge-2": _raw("huge-2", value=1e308),
        "dwell": _raw("dwell", kind="dwell", value=1e9),
        "version": _raw("version", schema_version=9),
        "future": _raw("future", ts=now + 86_400),
        "old": _raw("old", ts=now - MAX_EVENT_AGE_S - 60),
    }
    _produce(
        kafka_bootstrap,
        topics,
        [("impressions", b"i1", _imp("i1").model_dump_json().encode())]
        + [("feedback", b"i1", v) for v in bad.values()]
        + [("feedback", b"i1", _like("ok").model_dump_json().encode())],
    )
    m = member()
    m.run_until(lambda: store.counts("i1") == {"like": 1.0} and m.caught_up())
    envelopes = [json.loads(d.value) for d in read_topic(kafka_bootstrap, settings.topic_dead_letter, 5)]
    reasons = {json.loads(_b64(env["value_b64"]))["event_id"]: env["reason"] for env in envelopes}
    assert sorted(reasons) == sorted(bad) and len(envelopes) == len(bad)
    assert "value must be 1 for a like event" in reasons["huge-1"]
    assert "at most 3600 seconds" in reasons["dwell"]
    assert "schema_version 9 is unknown" in reasons["version"]
    assert "in the future" in reasons["future"]
    assert "over the allowed" in reasons["old"]
    assert store.offsets()[tp_key(settings.topic_feedback, 0)] == len(bad) + 1
    m.close()
    # A restart reads nothing again and does not crash.
    m2 = member()
    m2.run_until(m2.caught_up, settle_s=1.0)
    assert store.counts("i1") == {"like": 1.0}


def test_a_counter_already_broken_in_redis_is_dead_lettered_not_a_crash_loop(setup, kafka_bootstrap, redis_client):
    # State written before the checks existed: an overflowed counter reads back as inf, the record
    # fails validation, and publishing used to raise on every restart.
    settings, member, store = setup
    store.store_impressions([_imp("i1"), _imp("i2")], time.time())
    store.apply_events([(_like("e1"), b""), (_like("e2", "i2"), b"")], time.time(), 100)
    redis_client.hset(store.p + "cnt:i1", "like", "inf")
    m = member()
    assert m.agg.publish_due(coalesce_s=0.0, wait=True) == 2
    assert store.backlog() == 0
    (dead,) = [json.loads(d.value) for d in read_topic(kafka_bootstrap, settings.topic_dead_letter, 5)]
    assert "record cannot be built" in dead["reason"] and json.loads(_b64(dead["value_b64"]))["impression_id"] == "i1"
    records = read_topic(kafka_bootstrap, settings.topic_records, 5)
    assert [r.key for r in records] == [b"i2"]  # the healthy impression is published as usual


def test_a_dead_letter_that_cannot_be_written_holds_the_offsets(setup, kafka_bootstrap, unique_topics):
    settings, member, store = setup
    # The member's producer talks to a second real broker that then goes away: sends fail
    # asynchronously (flush returns, the futures carry the error) -- the case that was ignored.
    with EmbeddedBroker() as other:
        check_kafka(other.bootstrap)
        ensure_topics(other.bootstrap, [settings.topic_dead_letter], partitions=1)
        doomed = KafkaProducer(
            bootstrap_servers=other.bootstrap,
            acks="all",
            request_timeout_ms=1000,
            delivery_timeout_ms=2000,
            max_block_ms=2000,
            retries=0,
        )
        doomed.send(settings.topic_dead_letter, b"warm-up").get(10)  # metadata cached: later sends do not block
    topics = {"impressions": settings.topic_impressions, "feedback": settings.topic_feedback}
    _produce(
        kafka_bootstrap,
        topics,
        [
            ("impressions", b"i1", _imp("i1").model_dump_json().encode()),
            ("feedback", b"i1", _like("e1").model_dump_json().encode()),  # offset 0
            ("feedback", b"i1", b"\x00 not json"),  # offset 1
            ("feedback", b"i1", _like("e2").model_dump_json().encode()),  # offset 2
        ],
    )
    m = member(producer=doomed)
    with pytest.raises(DeadLetterUndeliverable, match="not acknowledged"):
        m.run_until(lambda: False, commit=True)
    feedback0 = TopicPartition(settings.topic_feedback, 0)
    assert store.offsets()[tp_key(settings.topic_feedback, 0)] == 1  # held at the unsent dead letter
    assert m.consumer.committed(feedback0) is None  # and nothing committed past it
    m.close()
    # Restart with a working producer: the garbage is re-read and dead-lettered, nothing counts twice.
    m2 = member()
    # 90 s, not 40: under the full suite's load the restarted confluent member once did not catch
    # up within 40 s (stop 28; cause not found, alone it takes ~15 s). A timeout now says where it stood.
    m2.run_until(lambda: store.offsets().get(tp_key(settings.topic_feedback, 0)) == 3 and m2.caught_up(), timeout_s=90)
    assert store.counts("i1") == {"like": 2.0}
    dead = read_topic(kafka_bootstrap, settings.topic_dead_letter, 5)
    assert [_b64(json.loads(d.value)["value_b64"]) for d in dead] == [b"\x00 not json"]


# --------------------------------------------------------------------------- item 4: offsets in Redis
def test_crash_between_the_redis_write_and_the_kafka_commit_counts_once(setup, kafka_bootstrap, redis_client):
    settings, member, store = setup
    topics = {"impressions": settings.topic_impressions, "feedback": settings.topic_feedback}
    _produce(
        kafka_bootstrap,
        topics,
        [("impressions", b"i1", _imp("i1").model_dump_json().encode())]
        + [("feedback", b"i1", _like(f"a{k}").model_dump_json().encode()) for k in range(3)],
    )
    crashed = member()
    crashed.run_until(lambda: store.counts("i1") == {"like": 3.0}, commit=False)  # written, never committed
    crashed.close()
    # The dedupe sets are not forever (they expire; Redis may evict them): exactly-once must not rest on them.
    redis_client.delete(store.p + "seen:i1")
    restarted = member()
    restarted.run_until(restarted.caught_up, settle_s=1.0)
    assert store.counts("i1") == {"like": 3.0}  # before: re-read from Kafka's (absent) commit, counted 6
    # Nothing lost either: new events after the restart count.
    _produce(kafka_bootstrap, topics, [("feedback", b"i1", _like("b0").model_dump_json().encode())])
    restarted.run_until(lambda: store.counts("i1") == {"like": 4.0})


def test_counts_survive_redis_losing_writes_that_kafka_already_committed(setup, kafka_bootstrap, redis_client):
    settings, member, store = setup
    topics = {"impressions": settings.topic_impressions, "feedback": settings.topic_feedback}
    _produce(
        kafka_bootstrap,
        topics,
        [("impressions", b"i1", _imp("i1").model_dump_json().encode())]
        + [("feedback", b"i1", _like(f"a{k}").model_dump_json().encode()) for k in range(3)],
    )
    m = member()
    m.run_until(lambda: store.counts("i1") == {"like": 3.0} and m.caught_up())
    snapshot = {k: redis_client.dump(k) for k in redis_client.scan_iter(match=store.p + "*")}
    later = [("feedback", b"i1", _like(f"b{k}").model_dump_json().encode()) for k in range(2)]
    _produce(kafka_bootstrap, topics, later)
    m.run_until(lambda: store.counts("i1") == {"like": 5.0} and m.caught_up())
    assert m.consumer.committed(TopicPartition(settings.topic_feedback, 0)) == 5
    m.close()
    # Redis restarts from the older snapshot (RDB, or AOF everysec losing its last second).
    redis_client.delete(*redis_client.scan_iter(match=store.p + "*"))
    for key, value in snapshot.items():
        redis_client.restore(key, 0, value)
    assert store.counts("i1") == {"like": 3.0}
    restarted = member()
    restarted.run_until(lambda: store.counts("i1") == {"like": 5.0} and restarted.caught_up(), settle_s=1.0)
    assert store.counts("i1") == {"like": 5.0}  # before: Kafka's commit skipped b0, b1 (lost)


# --------------------------------------------------------------------------- item 5: TTLs
def test_per_impression_keys_expire_after_longer_than_the_allowed_event_age(redis_client, redis_prefix):
    store = AggregatorStore(redis_client, redis_prefix)
    store.apply_events([(_like("e0", "i2"), b"")], time.time(), 100)  # parked: pending keys are managed, no TTL
    store.store_impressions([_imp("i1"), _imp("i2")], time.time())
    store.apply_events([(_like("e1"), b"")], time.time(), 100)
    for iid in ("i1", "i2"):
        for kind in ("imp:", "cnt:", "seen:"):
            ttl = redis_client.ttl(store.p + kind + iid)
            assert MAX_EVENT_AGE_S < ttl <= MAX_EVENT_AGE_S + 86_400, (kind, iid, ttl)
    short = AggregatorStore(redis_client, redis_prefix + "short:", key_ttl_s=30)
    short.store_impressions([_imp("i3")], time.time())
    assert 0 < redis_client.ttl(short.p + "imp:i3") <= 30
    settings = AggregatorSettings(redis_prefix=redis_prefix)
    agg = Aggregator(settings, redis_client, producer=None, consumer=None, max_event_age_s=3600)
    assert agg.store.key_ttl_s > 3600


# --------------------------------------------------------------------------- item 6: no secrets in logs
def test_no_log_line_carries_the_redis_password(kafka_bootstrap, unique_topics, redis_url, redis_prefix, caplog):
    assert redact("redis://default:s3cret@h:6379/0 and rediss://:pw@h?password=x") == (
        "redis://default:***@h:6379/0 and rediss://:***@h?password=***"
    )
    host = redis_url.split("://", 1)[1].rsplit("@", 1)[-1]
    secret_url = f"redis://default:s3cret-pw@{host}"  # the machine's Redis: user 'default' without a password
    settings = _settings(unique_topics, kafka_bootstrap, secret_url, redis_prefix, f"g-{uuid.uuid4().hex[:8]}")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with caplog.at_level(logging.INFO, logger="service.aggregator"):
            run(settings, stop=lambda: True)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert "aggregator up" in caplog.text
    assert "s3cret-pw" not in caplog.text and "default:***@" in caplog.text
    # Lines logged by anyone else (a client library quoting its URL) are cleaned by the handler filter.
    record = logging.LogRecord("redis", logging.ERROR, __file__, 1, "cannot reach %s", (secret_url,), None)
    assert RedactingFilter().filter(record) and "s3cret-pw" not in record.getMessage()


def test_retention_comes_from_the_settings_and_is_checked():
    from core.settings import AggregatorSettings

    settings = AggregatorSettings(max_event_age_s=3600, key_ttl_s=7200)
    assert (settings.max_event_age_s, settings.key_ttl_s) == (3600, 7200)
    with pytest.raises(ValueError, match="RLHB_AGG_KEY_TTL_S"):
        AggregatorSettings(max_event_age_s=3600, key_ttl_s=60)


def test_with_an_impression_secret_ids_the_service_did_not_sign_are_dead_letters(
    kafka_bootstrap, unique_topics, redis_url, redis_prefix
):
    """Events may be written straight to Kafka: with RLHB_API_IMPRESSION_SECRET set, the aggregator
    checks every impression's and event's id with the API's keys (core.impression_ids)."""
    from core.impression_ids import ImpressionIds

    secret = "aggregator-test-secret-0123456789"
    settings = _settings(unique_topics, kafka_bootstrap, redis_url, redis_prefix, f"g-{uuid.uuid4().hex[:8]}")
    settings = settings.model_copy(update={"impression_secret": SecretStr(secret)})
    signed = ImpressionIds(secret).issue("some-client")
    other_key = ImpressionIds("not-this-services-secret-0123").issue("some-client")
    expired = ImpressionIds(secret, ttl_s=60).issue("some-client", now=time.time() - 3600)
    topics = {"impressions": settings.topic_impressions, "feedback": settings.topic_feedback}
    _produce(
        kafka_bootstrap,
        topics,
        [("impressions", iid.encode(), _imp(iid).model_dump_json().encode()) for iid in (signed, other_key)]
        + [("feedback", signed.encode(), _like("ok", signed).model_dump_json().encode())]
        + [("feedback", b"x", _like("forged", other_key).model_dump_json().encode())]
        + [("feedback", b"x", _like("made-up", "imp-made-up").model_dump_json().encode())]
        + [("feedback", b"x", _like("late", expired).model_dump_json().encode())],
    )
    m = Member(settings, kafka_bootstrap, redis_url)
    store = AggregatorStore(redis_lib.Redis.from_url(redis_url, decode_responses=True), redis_prefix)
    try:
        m.run_until(lambda: store.counts(signed) == {"like": 1.0} and m.caught_up(), settle_s=1.0)
        envelopes = [json.loads(d.value) for d in read_topic(kafka_bootstrap, settings.topic_dead_letter, 4)]
        assert len(envelopes) == 4 and all("impression id refused" in e["reason"] for e in envelopes)
        assert any("expired" in e["reason"] for e in envelopes)
        assert store.counts(other_key) == {} and store.counts("imp-made-up") == {}
    finally:
        m.close()
