"""The committing shell around the pure fold: Kafka in, Redis state, Kafka out.

One loop per process; several processes in one consumer group share the partitions of
``impressions`` and ``feedback``. Each turn:

1. poll a batch (auto-commit is off);
2. decode it (pure: ``plan_batch``); undecodable messages, events that break the contract
   (re-validated here: producers may write to Kafka directly) and events older than
   ``max_event_age_s`` become dead letters;
3. apply it to Redis in one atomic script: impressions (draining events that waited for
   them), events (checked, then deduped + counted, or parked until the impression arrives),
   and the batch's next offsets -- held at the first dead letter of each partition;
4. send dead letters and wait for the broker's acknowledgement (a failure stops the member:
   the stored offsets still point at the unsent letters, so nothing is skipped); then move
   the stored offsets past them;
5. commit the batch's offsets to Kafka. Redis's stored offsets are the truth: on partition
   assignment the member seeks to them (``seek_to_stored``), so even a Redis restored from
   an older snapshot re-reads exactly what it lost, and a re-delivery is deduped anyway;
6. publish due BehaviorRecords (coalesced: one per impression per ``coalesce_ms``), lease
   based, so a crash mid-publish is re-published by any member after ``lease_s``;
7. now and then: expire events whose impression never came (to dead-letter, then drop),
   refit the rate edges (one member at a time, via a Redis lock) and reload them.

Records are at-least-once and idempotent (the latest record per impression wins); counts
are exactly-once; dead letters are at-least-once (a crash between sending one and moving
the stored offset past it sends it again).

Nothing logged carries credentials (service.aggregator.redact).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from core.behavior.encoding import (
    Encoding,
    RatesEncoding,
    encoding_from_json,
    encoding_to_json,
    fit_rate_edges,
    make_encoding,
)
from core.behavior.encoding_store import encoding_key, load_encoding, save_encoding
from core.settings import AggregatorSettings
from service.aggregator.fold import DeadLetter, RawMessage, build_record, parse_counts, plan_batch
from service.aggregator.incarnation import check_topics
from service.aggregator.redact import redact
from service.aggregator.redis_state import AggregatorStore, tp_key
from service.aggregator.retention import KEY_TTL_MARGIN_S, MAX_EVENT_AGE_S
from service.aggregator.status import AggregatorStatus
from service.aggregator.topic_reader import read_to_end

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 5.0
RELOAD_ENCODING_EVERY_S = 5.0


class DeadLetterUndeliverable(RuntimeError):
    """The broker did not acknowledge a dead letter: the batch's offsets must not move past it."""


@dataclass
class Stats:
    messages: int = 0
    events_counted: int = 0
    impressions: int = 0
    dead_letters: int = 0
    records_published: int = 0
    commits: int = 0
    extra: dict = field(default_factory=dict)


def settings_encoding(settings: AggregatorSettings) -> Encoding:
    return make_encoding(
        settings.encoding,
        num_buckets=settings.num_buckets,
        levels=settings.levels,
        rates=settings.rate_names,
        caps=settings.caps,
    )


def ensure_encoding(redis, settings: AggregatorSettings) -> Encoding:
    """The encoding the settings ask for, keeping stored fitted edges when they still fit."""
    wanted = settings_encoding(settings)
    stored = None
    raw = redis.get(encoding_key(settings.redis_prefix))
    if raw:
        try:
            stored = encoding_from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("stored encoding unreadable; replacing it with the configured one")
    if (
        stored is not None
        and isinstance(wanted, RatesEncoding)
        and isinstance(stored, RatesEncoding)
        and stored.rates == wanted.rates
        and stored.num_levels == wanted.num_levels
    ):
        return stored
    if stored is None or encoding_to_json(stored) != encoding_to_json(wanted):
        save_encoding(redis, settings.redis_prefix, wanted)
    return wanted


class Aggregator:
    """One aggregator member. ``consumer`` may be a group member or manually assigned (replay).

    ``max_event_age_s``: events older than this are dead letters (None: no limit, for replay);
    ``key_ttl_s``: TTL of the per-impression keys (default: the age plus a margin). Both belong
    in AggregatorSettings (service.aggregator.retention)."""

    def __init__(
        self,
        settings: AggregatorSettings,
        redis,
        producer,
        consumer,
        *,
        max_event_age_s: float | None = MAX_EVENT_AGE_S,
        key_ttl_s: float | None = None,
    ):
        self.settings, self.redis, self.producer, self.consumer = settings, redis, producer, consumer
        self.max_event_age_s = max_event_age_s
        if key_ttl_s is None:
            key_ttl_s = (max_event_age_s or MAX_EVENT_AGE_S) + KEY_TTL_MARGIN_S
        self.store = AggregatorStore(redis, settings.redis_prefix, key_ttl_s=key_ttl_s)
        self.id_problem = impression_id_check(settings)
        self.encoding = ensure_encoding(redis, settings)
        self._encoding_json = encoding_to_json(self.encoding)
        self.roles = {settings.topic_impressions: "impression", settings.topic_feedback: "event"}
        self.stats = Stats()
        self._in_flight: list[tuple[list, list[str], float]] = []
        self._applying = None  # Future of the batch being applied in the worker thread
        self._behind = False
        self._executor = None
        self._expire_every = min(EXPIRE_EVERY_S, settings.pending_ttl_s / 2)
        self._next_expire = time.monotonic() + self._expire_every
        self._next_reload = time.monotonic() + RELOAD_ENCODING_EVERY_S
        self._next_refit = time.monotonic() + min(settings.edges_refit_s, 5.0)
        topics = consumer.subscription() if consumer is not None and hasattr(consumer, "subscription") else None
        if topics:
            # Re-subscribe with the listener that seeks to the offsets stored in Redis on every
            # assignment (make_clients subscribes before the Aggregator, and so its listener, exists).
            consumer.subscribe(sorted(topics), listener=self.rebalance_listener())

    # ---------------------------------------------------------------- offsets in Redis
    def rebalance_listener(self):
        """kafka-python's hook for offsets kept outside Kafka: seek on assignment."""
        from kafka import ConsumerRebalanceListener

        agg = self

        class SeekToStoredOffsets(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                # Nothing to save: each batch's offsets were written with its counts.
                pass

            def on_partitions_assigned(self, assigned):
                agg.seek_to_stored(assigned)

        return SeekToStoredOffsets()

    def seek_to_stored(self, partitions) -> dict:
        """Position ``partitions`` at the offsets stored in Redis with the counts. Partitions
        without one (first start, or state from before offsets were stored) keep Kafka's
        committed offset. Returns {partition: offset} for those moved."""
        stored = self.store.offsets()
        moved = {}
        for tp in partitions:
            offset = stored.get(tp_key(tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
                moved[tp] = offset
        if moved:
            log.info("resuming from the offsets stored with the counts: %s", _describe(moved))
        return moved

    # ---------------------------------------------------------------- one turn
    def apply(self, batch: dict) -> tuple[dict, tuple[int, int, int]]:
        """Steps 2-4 for one poll result ({TopicPartition: [ConsumerRecord]}): decode, apply to
        Redis, dead-letter. Returns (offsets to commit, (messages, events counted, impressions)).
        Touches Redis and the producer but not the consumer, so it may run in a worker thread."""
        from kafka.structs import OffsetAndMetadata

        messages, offsets, ends = [], {}, {}
        for tp, records in batch.items():
            role = self.roles.get(tp.topic, "event")
            for r in records:
                messages.append(RawMessage(role, r.value, r.key, tp.topic, tp.partition, r.offset))
            if records:
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                ends[tp_key(tp.topic, tp.partition)] = records[-1].offset + 1
        if not messages:
            return {}, (0, 0, 0)
        now = time.time()
        plan = plan_batch(messages, now, self.max_event_age_s, self.id_problem)
        # Until its dead letter is acknowledged, a partition's stored offset stays at it.
        held = dict(ends)
        for d in plan.dead:
            key = tp_key(d.message.topic, d.message.partition)
            if key in held:
                held[key] = min(held[key], d.message.offset)
        done = self.store.apply_batch(
            plan.impressions,
            [ev for ev, _msg in plan.events],
            now,
            self.settings.pending_max,
            positions=[(tp_key(m.topic, m.partition), m.offset) for _ev, m in plan.events],
            offsets=held,
        )
        # Read as events but neither counted nor refused: duplicates, in the batch (dropped by
        # plan_batch) or already counted (or parked until the impression; see status.py).
        read_events = len(messages) - len(plan.dead) - len(plan.impressions)
        uncounted = max(0, read_events - done.counted - len(done.rejected))
        self.stats.extra["dedupe_hits"] = self.stats.extra.get("dedupe_hits", 0) + uncounted
        dead = list(plan.dead)
        for i, reason in done.rejected:
            ev, msg = plan.events[i]
            if reason == "pending_full":
                reason = (
                    f"pending store full ({self.settings.pending_max} events wait for impressions): impression "
                    f"{ev.impression_id!r} unknown"
                )
            dead.append(DeadLetter(f"refused by the counter: {reason}", msg))
        for iid, eid, entry, reason in done.dropped:
            value = json.dumps({"event_id": eid, "impression_id": iid, "pending_entry": entry}).encode()
            dead.append(
                DeadLetter(
                    f"waiting event could not be counted when its impression arrived: {reason}",
                    RawMessage("event", value, iid.encode(), self.settings.topic_feedback),
                )
            )
        if dead:
            self.send_dead(dead)  # raises when not acknowledged: the stored offsets stay before them
            self.store.save_offsets(ends)
        return offsets, (len(messages), done.counted + done.drained, len(plan.impressions))

    def _account(self, counts: tuple[int, int, int]) -> None:
        self.stats.messages += counts[0]
        self.stats.events_counted += counts[1]
        self.stats.impressions += counts[2]

    def process(self, batch: dict, commit: bool = True) -> None:
        """Steps 2-5, synchronously (replay, tests)."""
        offsets, counts = self.apply(batch)
        self._account(counts)
        if commit and offsets:
            self.commit(offsets)

    def finish_applying(self) -> None:
        """Step 5 for the batch being applied in the worker: wait for it, then commit its offsets.
        An exception (e.g. Redis down) propagates: the process stops without committing and the
        batch is re-delivered (and deduped) after a restart."""
        if self._applying is None:
            return
        applying, self._applying = self._applying, None  # raise once, not again in close()
        offsets, counts = applying.result()
        self._account(counts)
        if offsets:
            self.commit(offsets)

    def commit(self, offsets: dict) -> None:
        from kafka.errors import CommitFailedError, KafkaError

        try:
            self.consumer.commit(offsets)
            self.stats.commits += 1
        except (CommitFailedError, KafkaError) as e:
            # A rebalance took the partitions: the new owner re-reads from the last commit and
            # the dedupe skips what this member already counted.
            log.warning("offset commit failed (%s); the batch will be re-delivered and deduped", e)

    def send_dead(self, dead: list[DeadLetter]) -> None:
        """Send dead letters and wait for every acknowledgement; raise DeadLetterUndeliverable if
        any is missing (``flush`` alone returns even when sends failed)."""
        from kafka.errors import KafkaError

        futures = []
        try:
            for d in dead:
                log.warning(
                    "dead letter from %s[%s]@%s: %s", d.message.topic, d.message.partition, d.message.offset, d.reason
                )
                futures.append(
                    self.producer.send(self.settings.topic_dead_letter, key=d.message.key, value=d.envelope())
                )
            self.producer.flush()
        except KafkaError as e:
            raise DeadLetterUndeliverable(
                f"dead letters not written to {self.settings.topic_dead_letter!r}: {e}"
            ) from e
        failed = [f for f in futures if not (f.is_done and f.succeeded())]
        if failed:
            err = next((f.exception for f in failed if f.is_done), "not acknowledged")
            raise DeadLetterUndeliverable(
                f"{len(failed)} of {len(futures)} dead letters not acknowledged by {self.settings.topic_dead_letter!r} "
                f"({err}); their offsets are not committed, so they are re-read after a restart"
            )
        self.stats.dead_letters += len(dead)

    def publish_due(self, coalesce_s: float | None = None, wait: bool = False) -> int:
        """Step 6: publish records of impressions changed at least ``coalesce_s`` ago.

        Sends do not block the loop: a claimed batch is released (its lease dropped) once the
        broker acknowledged all of it, checked on later turns; ``wait=True`` blocks until then.
        A batch that fails keeps its lease, which expires, and the records are re-published."""
        from schemas import Impression

        if coalesce_s is None:
            coalesce_ms = max(self.settings.coalesce_ms, self.settings.catchup_coalesce_ms if self._behind else 0)
            coalesce_s = coalesce_ms / 1000
        total = 0
        while True:
            now = time.time()
            iids = self.store.claim_dirty(now, coalesce_s, self.settings.lease_s, limit=1000)
            if not iids:
                break
            futures, broken = [], []
            for iid, imp_json, raw_counts in self.store.load(iids):
                if imp_json is None:
                    continue
                try:
                    counts = parse_counts(raw_counts)
                    record = build_record(Impression.model_validate_json(imp_json), counts, self.encoding, now)
                except (ValueError, ValidationError) as e:
                    # Damaged state (e.g. an overflowed counter written before the checks existed):
                    # one impression's record is lost to the dead-letter topic, not the member to a crash loop.
                    broken.append(_unbuildable(iid, imp_json, raw_counts, e, self.settings.topic_records))
                    continue
                futures.append(
                    self.producer.send(
                        self.settings.topic_records, key=iid.encode(), value=record.model_dump_json().encode()
                    )
                )
            release = iids
            if broken:
                try:
                    self.send_dead(broken)
                except DeadLetterUndeliverable as e:
                    log.error("%s; those impressions stay leased and are retried", e)
                    unsent = {d.message.key.decode() for d in broken}
                    release = [i for i in iids if i not in unsent]
            self._in_flight.append((futures, release, now))
            total += len(iids)
            if len(iids) < 1000:
                break
        if wait and self._in_flight:
            self.producer.flush()
        self._release_acknowledged()
        return total

    def _release_acknowledged(self) -> None:
        still = []
        for futures, iids, claimed_at in self._in_flight:
            if not all(f.is_done for f in futures):
                still.append((futures, iids, claimed_at))
            elif all(f.succeeded() for f in futures):
                self.store.release(iids, claimed_at)
                self.stats.records_published += len(iids)
            else:
                err = next(f.exception for f in futures if f.failed())
                log.warning(
                    "%d records not acknowledged (%s); they are re-published when the lease expires", len(iids), err
                )
        self._in_flight = still

    def housekeeping(self) -> None:
        """Step 7, on timers."""
        mono = time.monotonic()
        if mono >= self._next_expire:
            self._next_expire = mono + self._expire_every
            self.expire_pending()
        if mono >= self._next_refit:
            self._next_refit = mono + self.settings.edges_refit_s
            self.refit_edges()
        if mono >= self._next_reload:
            self._next_reload = mono + RELOAD_ENCODING_EVERY_S
            self.reload_encoding()

    def expire_pending(self) -> int:
        cutoff = time.time() - self.settings.pending_ttl_s
        expired = self.store.expired_pending(cutoff)
        if not expired:
            return 0
        dead = [
            DeadLetter(
                f"impression {iid!r} never arrived within pending_ttl_s={self.settings.pending_ttl_s:g}s",
                RawMessage("event", raw.encode(), iid.encode(), self.settings.topic_feedback),
            )
            for iid, entries in expired.items()
            for _arrival, raw in entries.values()
        ]
        try:
            self.send_dead(dead)  # acknowledged before the events are forgotten: nothing is lost
        except DeadLetterUndeliverable as e:
            log.error("%s; the expired events stay pending and are retried", e)
            return 0
        for iid, entries in expired.items():
            self.store.drop_pending(iid, list(entries), cutoff)
        return len(dead)

    def refit_edges(self, force: bool = False) -> None:
        if not isinstance(self.encoding, RatesEncoding):
            return
        lock = self.settings.redis_prefix + "agg:refit_lock"
        period = max(1, int(self.settings.edges_refit_s))
        if not force and not self.redis.set(lock, socket.gethostname(), nx=True, ex=period):
            return  # another member refits this period
        self.store.trim_recent(self.settings.edges_sample)
        sample = self.store.recent_counts(self.settings.edges_sample)
        edges = fit_rate_edges(sample, self.encoding.rates, self.encoding.num_levels, self.settings.edges_min_records)
        if edges.fitted_on:
            self.encoding = self.encoding.with_edges(edges)
            save_encoding(self.redis, self.settings.redis_prefix, self.encoding)
            self._encoding_json = encoding_to_json(self.encoding)
            log.info("rate edges refitted on %d records: %s", edges.fitted_on, edges.edges)

    def reload_encoding(self) -> None:
        raw = self.redis.get(encoding_key(self.settings.redis_prefix))
        if raw and raw != self._encoding_json:
            try:
                self.encoding = load_encoding(self.redis, self.settings.redis_prefix)
                self._encoding_json = raw
            except (ValueError, KeyError) as e:
                log.warning("stored encoding unreadable (%s); keeping the current one", e)

    def turn(self) -> None:
        """One turn, pipelined: batch N is applied to Redis in a worker thread while the main
        thread polls batch N+1; N's offsets are committed only after its apply returned."""
        batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records)
        # Behind (a full poll, or messages left to read): coalesce records longer, since every
        # intermediate record of a backlog is superseded within the same catch-up.
        self._behind = sum(len(v) for v in batch.values()) >= self.settings.max_poll_records or self.lag() > 0
        self.finish_applying()
        if any(batch.values()):
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(1, thread_name_prefix="aggregator-apply")
            self._applying = self._executor.submit(self.apply, batch)
        self.publish_due()
        self.housekeeping()

    def lag(self) -> int:
        """Messages known to be waiting on this member's partitions (from fetch high watermarks)."""
        total = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.consumer.position(tp) if high is not None else None
            if position is not None:  # None: not fetched yet (confluent), or kafka-python's lookup timed out
                total += max(0, high - position)
        return total

    def close(self) -> None:
        """Commit what was applied, publish what is due, stop the worker."""
        self.finish_applying()
        self.publish_due(wait=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def impression_id_check(settings: AggregatorSettings):
    """(id, ts) -> why the id is refused, or None; None when no impression secret is configured
    (dev mode and tests: ids are then not checked). The same keys and rules as the API
    (core.impression_ids), without the client binding: producers that write to Kafka are trusted
    with their clients, not with forging ids. Expiry is judged at the message's own time, so
    consumer lag never refuses an event that was on time."""
    from core.impression_ids import ImpressionIds, parse_old_secrets

    secret = settings.impression_secret.get_secret_value()
    if not secret:
        return None
    ids = ImpressionIds(
        secret,
        key_id=settings.impression_key_id,
        old_secrets=parse_old_secrets(settings.impression_old_secrets.get_secret_value()),
        accept_legacy=settings.impression_accept_legacy,
    )

    def problem(impression_id: str, ts: float) -> str | None:
        _facts, refused = ids.check(impression_id, client_key=None, now=ts)
        return None if refused is None else refused.reason

    return problem


def _describe(offsets: dict) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{off}" for tp, off in sorted(offsets.items()))


def _unbuildable(iid: str, imp_json: str, raw_counts: dict, err: Exception, topic: str) -> DeadLetter:
    value = json.dumps({"impression_id": iid, "impression": imp_json, "counts": raw_counts}).encode()
    return DeadLetter(
        f"record cannot be built from the stored state: {err}", RawMessage("record", value, iid.encode(), topic)
    )


# -------------------------------------------------------------------- process wiring
def make_clients(settings: AggregatorSettings, bootstrap: str, redis_url: str, group: bool = True):
    from kafka import KafkaProducer

    from core.infra.broker import group_consumer
    from core.infra.kafka_security import kafka_client_options, kafka_producer_options
    from core.infra.redis_url import redis_from_url

    redis = redis_from_url(redis_url, decode_responses=True)
    # gzip (zlib, in C): behavior records are repetitive JSON, and kafka-python checksums every
    # batch in pure Python (without the optional crc32c package), so fewer bytes is much less CPU.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        **kafka_producer_options(settings),
        linger_ms=5,
        compression_type="gzip",
        request_timeout_ms=10_000,
        max_block_ms=10_000,
        batch_size=256 * 1024,
    )
    client_id = f"rlhb-aggregator-{socket.gethostname()}"
    if group and settings.kafka_client == "confluent":
        # librdkafka behind kafka-python's interface (service/aggregator/kafka_client.py); replay
        # (group=False) assigns partitions by hand with kafka-python calls, so it keeps kafka-python.
        from service.aggregator.kafka_client import confluent_group_consumer

        consumer = confluent_group_consumer(settings, bootstrap, client_id)
    else:
        consumer = group_consumer(
            bootstrap,
            group_id=settings.group_id,
            client_id=client_id,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            poll_timeout_ms=settings.poll_timeout_ms,
            max_poll_records=settings.max_poll_records,
            **kafka_client_options(settings),
        )
    if group:
        consumer.subscribe([settings.topic_impressions, settings.topic_feedback])
    return redis, producer, consumer


def run(settings: AggregatorSettings, stop=None) -> Stats:
    """Run one aggregator member until SIGTERM/SIGINT (or ``stop()`` returns True)."""
    from core.infra.resolve import resolve_infra

    infra = resolve_infra(settings)
    redis, producer, consumer = make_clients(settings, infra.bootstrap, infra.redis_url)
    # Before the first poll (whose assignment seeks to the stored offsets): offsets into a log
    # that was recreated (the embedded broker restarted, Redis kept its state) are forgotten.
    check_topics(redis, settings.redis_prefix, infra.bootstrap, sorted(consumer.subscription()), infra.kafka_options)
    agg = Aggregator(
        settings,
        redis,
        producer,
        consumer,
        max_event_age_s=settings.max_event_age_s,
        key_ttl_s=settings.key_ttl_s or None,
    )
    status = AggregatorStatus(redis, settings.redis_prefix, settings.status_period_s, settings.metrics_port)
    status.serve()
    stopping = {"now": False}

    def _stop(*_):
        stopping["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "aggregator up: group %s on %s, redis %s, prefix %r",
        settings.group_id,
        redact(infra.bootstrap),
        redact(infra.redis_url),  # the URL may carry a password
        settings.redis_prefix,
    )
    try:
        while not stopping["now"] and not (stop and stop()):
            agg.turn()
            status.tick(agg)
    finally:
        try:
            agg.close()
        finally:
            status.close()
            _close_clients(redis, producer, consumer, infra)
    return agg.stats


def _close_clients(redis, producer, consumer, infra) -> None:
    """Close what ``make_clients`` and ``resolve_infra`` opened (no offset commit on close)."""
    consumer.close(autocommit=False)
    producer.flush(10)
    producer.close(10)
    redis.close()
    infra.stop()


def replay(settings: AggregatorSettings) -> dict:
    """Rebuild the Redis state from offset 0 of both topics, publish every record, and leave
    the group's committed offsets at the end, so live members resume where replay stopped.
    Stop the group's aggregators first (they would race the rebuild)."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from core.infra.resolve import resolve_infra

    infra = resolve_infra(settings)
    redis, producer, consumer = make_clients(settings, infra.bootstrap, infra.redis_url, group=False)
    try:
        parts = [
            TopicPartition(t, p)
            for t in (settings.topic_impressions, settings.topic_feedback)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        deleted = AggregatorStore(redis, settings.redis_prefix).clear()
        # No age limit: the whole log is re-counted, however old (the keys get fresh TTLs).
        agg = Aggregator(settings, redis, producer, consumer, max_event_age_s=None)
        for batch in read_to_end(consumer, parts, max_records=settings.max_poll_records):
            agg.process(batch, commit=False)
        published = agg.publish_due(coalesce_s=0.0, wait=True)
        agg.refit_edges(force=True)
        end = {tp: consumer.position(tp) for tp in parts}
        agg.store.save_offsets({tp_key(tp.topic, tp.partition): end[tp] for tp in parts})
        check_topics(
            redis, settings.redis_prefix, infra.bootstrap, sorted({tp.topic for tp in parts}), infra.kafka_options
        )
        consumer.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in parts})
        return {
            "messages": agg.stats.messages,
            "events_counted": agg.stats.events_counted,
            "impressions": agg.stats.impressions,
            "dead_letters": agg.stats.dead_letters,
            "records_published": published,
            "keys_deleted": deleted,
            "end_offsets": {f"{tp.topic}[{tp.partition}]": end[tp] for tp in parts},
        }
    finally:
        _close_clients(redis, producer, consumer, infra)
