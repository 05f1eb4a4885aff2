"""The aggregator's group consumer on confluent-kafka (librdkafka), behind kafka-python's interface.

Why: librdkafka fetches, decompresses, checksums and parses records in C threads, outside the
GIL; kafka-python does all of it in Python (its CRC32C alone was a quarter of the aggregator's
CPU in bench/README.md's profile). ``RLHB_AGG_KAFKA_CLIENT=confluent`` selects this consumer.

Why an adapter rather than a second Aggregator: the exactly-once logic (offsets stored in Redis
with the counts, sought on every assignment; Kafka commits only after the store) is written
against the few kafka-python consumer calls below, and this class answers them the same way,
so ``Aggregator`` runs unchanged on either client:

- ``poll(timeout_ms, max_records)`` -> {TopicPartition: [record with .key .value .offset]};
- ``subscribe(topics, listener)``: the listener's ``on_partitions_assigned`` runs inside the
  assignment, and a ``seek`` made from it becomes the partition's start offset in librdkafka's
  ``assign`` (librdkafka cannot seek a partition before it is assigned);
- ``commit({tp: OffsetAndMetadata})``, synchronous; a failure raises kafka-python's
  ``CommitFailedError`` (what ``Aggregator.commit`` handles);
- ``assignment``, ``position``, ``highwater`` (lag), ``committed``, ``end_offsets`` (tests),
  ``subscription``, ``close``.

Differences: an exception raised by the assignment listener (e.g. Redis unreachable while
reading the stored offsets) stops the member here -- confluent-kafka re-raises it from
``poll`` -- where kafka-python logs it and starts from Kafka's committed offset; stopping is
the safer of the two for exactly-once. Replay and every producer stay on kafka-python.
Checked against the embedded tansu broker: produce, group join, consume, synchronous commit,
``committed``, seek, offsets given at assignment (tests/service/aggregator/test_kafka_client.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from core.infra.kafka_security import confluent_client_options
from core.settings import AggregatorSettings

log = logging.getLogger(__name__)

CLIENTS = ("kafka-python", "confluent")


class Record:
    """What ``Aggregator.apply`` reads of a consumed message (kafka-python's ConsumerRecord has these too)."""

    __slots__ = ("key", "offset", "value")

    def __init__(self, key: bytes | None, value: bytes | None, offset: int):
        self.key, self.value, self.offset = key, value, offset


class ConfluentGroupConsumer:
    """A confluent-kafka consumer-group member answering the kafka-python calls the aggregator makes."""

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str,
        client_id: str,
        max_poll_interval_ms: int,
        session_timeout_ms: int,
        poll_timeout_ms: int,
        max_poll_records: int,
        options: Mapping[str, object] | None = None,
    ):
        from confluent_kafka import Consumer

        self._max_records = max_poll_records
        self._topics: list[str] = []
        self._listener = None
        self._seeks: dict[tuple[str, int], int] | None = None  # collected while the listener runs
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._starts: dict[tuple[str, int], int] = {}  # see _on_assign
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "client.id": client_id,
                # The caller commits, after the batch is stored in Redis (as with kafka-python).
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                # librdkafka refuses a poll interval below the session timeout; kafka-python does not.
                "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms),
                "heartbeat.interval.ms": max(100, session_timeout_ms // 6),
                "fetch.wait.max.ms": min(100, poll_timeout_ms),
                **(options or {}),
            },
            logger=log,  # librdkafka's log lines through logging, not raw on stderr
        )

    # ---------------------------------------------------------------- group membership
    def subscribe(self, topics: Iterable[str], listener=None) -> None:
        self._topics = sorted(topics)
        self._listener = listener
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def subscription(self) -> set[str]:
        return set(self._topics)

    def member_id(self) -> str | None:
        """The group member id the coordinator gave this consumer (None before it joined): a diagnostic."""
        return self._consumer.memberid()

    def _on_assign(self, consumer, partitions) -> None:
        self._seeks = {}
        try:
            if self._listener is not None:
                self._listener.on_partitions_assigned([self._tp(p.topic, p.partition) for p in partitions])
            seeks = self._seeks
        finally:
            self._seeks = None
        for p in partitions:
            offset = seeks.get((p.topic, p.partition))
            if offset is not None:
                p.offset = offset  # start here instead of the group's committed offset
        # Where each partition starts, for ``position`` until a message of it is read (librdkafka
        # knows no position before that; kafka-python looks it up): the seek, else the group's
        # commit, else -1 (the earliest offset, auto.offset.reset).
        unsought = [p for p in partitions if (p.topic, p.partition) not in seeks]
        committed = consumer.committed(unsought, timeout=10) if unsought else []
        self._starts = {(p.topic, p.partition): p.offset for p in partitions if p.offset >= 0}
        self._starts.update({(p.topic, p.partition): max(p.offset, -1) for p in committed})
        consumer.assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        if self._listener is not None:
            self._listener.on_partitions_revoked([self._tp(p.topic, p.partition) for p in partitions])

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        key = (topic, partition)
        tp = self._tps.get(key)
        if tp is None:
            tp = self._tps[key] = TopicPartition(topic, partition)
        return tp

    # ---------------------------------------------------------------- reading
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        msgs = self._consumer.consume(max_records or self._max_records, timeout_ms / 1000)
        out: dict[TopicPartition, list[Record]] = {}
        tps = self._tps
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaError(f"fatal consumer error: {err.str()}")
                log.warning("consumer error (retried by librdkafka): %s", err.str())
                continue
            key = (m.topic(), m.partition())
            tp = tps.get(key) or self._tp(*key)
            records = out.get(tp)
            if records is None:
                records = out[tp] = []
            records.append(Record(m.key(), m.value(), m.offset()))
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._seeks is not None:  # inside the assignment: becomes the start offset of ``assign``
            self._seeks[(tp.topic, tp.partition)] = offset
            return
        from confluent_kafka import TopicPartition as CTP

        self._consumer.seek(CTP(tp.topic, tp.partition, offset))
        self._starts[(tp.topic, tp.partition)] = offset

    # ---------------------------------------------------------------- offsets
    def commit(self, offsets: Mapping[TopicPartition, object]) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        parts = [CTP(tp.topic, tp.partition, int(getattr(o, "offset", o))) for tp, o in offsets.items()]
        try:
            result = self._consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as e:
            raise CommitFailedError(str(e)) from e
        failed = [p for p in result or () if p.error is not None]
        if failed:
            raise CommitFailedError("; ".join(f"{p.topic}[{p.partition}]: {p.error}" for p in failed))

    def committed(self, tp: TopicPartition, timeout_s: float = 10.0) -> int | None:
        from confluent_kafka import TopicPartition as CTP

        (got,) = self._consumer.committed([CTP(tp.topic, tp.partition)], timeout=timeout_s)
        return got.offset if got.offset >= 0 else None

    def assignment(self) -> set[TopicPartition]:
        return {self._tp(p.topic, p.partition) for p in self._consumer.assignment()}

    def position(self, tp: TopicPartition) -> int | None:
        """Next offset this member reads (as kafka-python's, also before a message of the partition
        was read); None when not known yet (an earliest start before the first fetch response)."""
        from confluent_kafka import TopicPartition as CTP

        (got,) = self._consumer.position([CTP(tp.topic, tp.partition)])
        if got.offset >= 0:
            return got.offset
        start = self._starts.get((tp.topic, tp.partition))
        if start is None or start >= 0:
            return start
        marks = self._consumer.get_watermark_offsets(CTP(tp.topic, tp.partition), cached=True)
        return marks[0] if marks and marks[0] >= 0 else None

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end as of the last fetch response (no request, like kafka-python's)."""
        from confluent_kafka import TopicPartition as CTP

        marks = self._consumer.get_watermark_offsets(CTP(tp.topic, tp.partition), cached=True)
        return marks[1] if marks and marks[1] >= 0 else None

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int]:
        from confluent_kafka import TopicPartition as CTP

        return {
            tp: self._consumer.get_watermark_offsets(CTP(tp.topic, tp.partition), timeout=timeout_s)[1]
            for tp in partitions
        }

    def close(self, autocommit: bool = False) -> None:
        """Leave the group. Never commits: auto-commit is off, and the caller commits what it stored."""
        self._consumer.close()


def confluent_group_consumer(settings: AggregatorSettings, bootstrap: str, client_id: str) -> ConfluentGroupConsumer:
    return ConfluentGroupConsumer(
        bootstrap,
        group_id=settings.group_id,
        client_id=client_id,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        poll_timeout_ms=settings.poll_timeout_ms,
        max_poll_records=settings.max_poll_records,
        options=confluent_client_options(settings),
    )
