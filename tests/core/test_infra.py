"""The embedded broker and Redis, exercised for real (no mocks)."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from core.infra.broker import InfraError, check_kafka, ensure_topics
from core.infra.redis_server import EmbeddedRedis, check_redis, redis_answers


def _consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_interval_ms=5000,
        session_timeout_ms=5000,
        heartbeat_interval_ms=500,
    )


def _drain(consumer: KafkaConsumer, want: int, rounds: int = 40) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(rounds):
        for msgs in consumer.poll(timeout_ms=500).values():
            got.extend(m.value for m in msgs)
        if len(got) >= want:
            break
    return got


def test_produce_consume_and_committed_offsets_survive_consumer_restart(kafka_bootstrap):
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(20):
        producer.send(topic, key=str(i).encode(), value=f"m{i}".encode())
    producer.flush()

    first = _consumer(kafka_bootstrap, topic, group)
    got = _drain(first, 20)
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(20))
    first.commit()
    first.close()

    for i in range(20, 25):
        producer.send(topic, key=str(i).encode(), value=f"m{i}".encode())
    producer.flush()
    producer.close()

    # A new member of the same group resumes from the committed offsets: only new messages.
    second = _consumer(kafka_bootstrap, topic, group)
    again = _drain(second, 5)
    assert sorted(again) == sorted(f"m{i}".encode() for i in range(20, 25))
    committed = sum(second.committed(TopicPartition(topic, p)) or 0 for p in (0, 1))
    assert committed == 20
    second.close()


def test_ensure_topics_is_idempotent_and_creates_partitions(kafka_bootstrap):
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=4)
    ensure_topics(kafka_bootstrap, [topic], partitions=4)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    assert consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
    consumer.close()


def test_unreachable_kafka_fails_fast_with_a_clear_line():
    with pytest.raises(InfraError, match="RLHB_KAFKA_BOOTSTRAP_SERVERS"):
        check_kafka("127.0.0.1:1", timeout_s=1.5)


def test_real_redis_roundtrip_under_own_prefix(redis_client, redis_prefix):
    key = redis_prefix + "k"
    redis_client.incrby(key, 3)
    redis_client.incrby(key, 4)
    assert redis_client.get(key) == "7"


def test_wrong_redis_url_is_a_clear_error():
    with pytest.raises(InfraError, match="RLHB_REDIS_URL"):
        check_redis("redis://127.0.0.1:1/0")


def test_embedded_valkey_starts_and_stops():
    server = EmbeddedRedis().start()
    try:
        assert redis_answers(server.url)
    finally:
        server.stop()
    assert not redis_answers(server.url, timeout_s=0.3)
