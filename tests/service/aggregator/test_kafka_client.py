"""The confluent-kafka consumer adapter (RLHB_AGG_KAFKA_CLIENT=confluent) on the real embedded
broker: it must answer the kafka-python calls the aggregator's exactly-once logic rests on --
seeks made while partitions are assigned are where reading starts, commits are synchronous
and read back, lag comes from the fetches -- and a failing assignment stops the member instead
of silently reading from Kafka's commit. The aggregator's own exactly-once tests run on both
clients (test_reliability.py, test_pipeline.py)."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import ConsumerRebalanceListener, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from core.settings import AggregatorSettings
from service.aggregator.kafka_client import ConfluentGroupConsumer, confluent_group_consumer


def _consumer(bootstrap: str, group: str) -> ConfluentGroupConsumer:
    return ConfluentGroupConsumer(
        bootstrap,
        group_id=group,
        client_id="test",
        max_poll_interval_ms=6000,
        session_timeout_ms=4000,
        poll_timeout_ms=100,
        max_poll_records=500,
    )


def _fill(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        producer.send(topic, key=b"k", value=f"m{i}".encode(), partition=0)
    producer.flush()
    producer.close(5)


def _read(consumer: ConfluentGroupConsumer, until, timeout_s: float = 30) -> dict:
    got: dict = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(got):
        for tp, records in consumer.poll(timeout_ms=200).items():
            got.setdefault(tp, []).extend(records)
    assert until(got), f"timed out with {[(tp, len(r)) for tp, r in got.items()]}"
    return got


class _SeekTo(ConsumerRebalanceListener):
    def __init__(self, consumer, offsets: dict):
        self.consumer, self.offsets, self.assigned = consumer, offsets, []

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        self.assigned.extend(assigned)
        for tp in assigned:
            if tp in self.offsets:
                self.consumer.seek(tp, self.offsets[tp])


def test_a_seek_made_during_assignment_is_where_reading_starts(kafka_bootstrap, unique_topics):
    topic = unique_topics["feedback"]
    tp = TopicPartition(topic, 0)
    _fill(kafka_bootstrap, topic, 10)
    consumer = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
    try:
        listener = _SeekTo(consumer, {tp: 6})  # what Aggregator.seek_to_stored does with Redis's offsets
        consumer.subscribe([topic], listener=listener)
        got = _read(consumer, lambda g: sum(len(r) for r in g.values()) >= 4)
        assert set(listener.assigned) == {TopicPartition(topic, p) for p in range(4)}
        assert [r.offset for r in got[tp]] == [6, 7, 8, 9]  # not 0: the group has no commit yet
        assert [r.value for r in got[tp]] == [b"m6", b"m7", b"m8", b"m9"] and got[tp][0].key == b"k"
        # Lag as the aggregator computes it: the fetch's high watermark against the position.
        assert consumer.highwater(tp) == 10 and consumer.position(tp) == 10
        # A seek outside an assignment moves an assigned partition back.
        consumer.seek(tp, 2)
        again = _read(consumer, lambda g: len(g.get(tp, [])) >= 8)
        assert [r.offset for r in again[tp]] == list(range(2, 10))
    finally:
        consumer.close()


def test_commits_are_synchronous_read_back_and_resumed_from(kafka_bootstrap, unique_topics):
    topic = unique_topics["feedback"]
    tp = TopicPartition(topic, 0)
    _fill(kafka_bootstrap, topic, 10)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consumer(kafka_bootstrap, group)
    try:
        first.subscribe([topic])
        _read(first, lambda g: len(g.get(tp, [])) >= 10)
        assert first.committed(tp) is None  # nothing committed on its own: auto-commit is off
        first.commit({tp: OffsetAndMetadata(4, "", -1)})
        assert first.committed(tp) == 4
    finally:
        first.close()
    second = _consumer(kafka_bootstrap, group)
    try:
        second.subscribe([topic])
        got = _read(second, lambda g: len(g.get(tp, [])) >= 6)
        assert [r.offset for r in got[tp]] == list(range(4, 10))  # from the commit, closing committed nothing more
    finally:
        second.close()


class _Broken(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        raise ConnectionError("redis unreachable while reading the stored offsets")


def test_a_failing_assignment_stops_the_member_instead_of_reading_from_kafkas_commit(kafka_bootstrap, unique_topics):
    topic = unique_topics["feedback"]
    _fill(kafka_bootstrap, topic, 3)
    consumer = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
    try:
        consumer.subscribe([topic], listener=_Broken())
        deadline = time.monotonic() + 30
        with pytest.raises(ConnectionError, match="redis unreachable"):
            while time.monotonic() < deadline:
                assert consumer.poll(timeout_ms=200) == {}  # never a record read from an unsought position
    finally:
        consumer.close()


def test_built_from_the_aggregator_settings(kafka_bootstrap, unique_topics):
    settings = AggregatorSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        kafka_client="confluent",
        session_timeout_ms=8000,
        max_poll_interval_ms=4000,  # below the session timeout: librdkafka refuses that, kafka-python does not
    )
    consumer = confluent_group_consumer(settings, kafka_bootstrap, "test")
    try:
        consumer.subscribe([unique_topics["feedback"]])
        assert consumer.subscription() == {unique_topics["feedback"]}
        _fill(kafka_bootstrap, unique_topics["feedback"], 2)
        _read(consumer, lambda g: sum(len(r) for r in g.values()) == 2)
    finally:
        consumer.close()


def test_kafka_python_checks_record_batch_crcs_with_the_c_crc32c_package():
    """The ``crc32c`` dependency: without it kafka-python computes every batch's CRC32C in pure Python, a quarter
    of the raw consume speed (bench/README.md); with it the checksums must stay those of the Python fallback."""
    from kafka.record import util

    assert util.crc32c_c is not None, "the crc32c package is not importable: kafka-python falls back to Python"
    batch = memoryview(bytes(range(256)) * 40)
    assert util.calc_crc32c(batch) == util.crc32c_py(batch)
