"""The committing shell around the pure fold: Kafka in, Redis state, Kafka out.

One loop per process; several processes in one consumer group share the partitions of
``impressions`` and ``feedback``. Each turn:

1. poll a batch (auto-commit is off);
2. decode it (pure: ``plan_batch``); undecodable messages become dead letters;
3. apply it to Redis in two atomic scripts: impressions (draining events that waited for
   them), then events (dedupe + count, or park until the impression arrives);
4. send dead letters and wait for the broker's acknowledgement;
5. commit the batch's offsets -- only now, so a crash before this point re-delivers the
   batch and the dedupe in step 3 makes the re-delivery harmless;
6. publish due BehaviorRecords (coalesced: one per impression per ``coalesce_ms``), lease
   based, so a crash mid-publish is re-published by any member after ``lease_s``;
7. now and then: expire events whose impression never came (to dead-letter, then drop),
   refit the rate edges (one member at a time, via a Redis lock) and reload them.

Records are at-least-once and idempotent (the latest record per impression wins); counts
are exactly-once.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from dataclasses import dataclass, field

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
from service.aggregator.fold import DeadLetter, RawMessage, build_record, plan_batch
from service.aggregator.redis_state import AggregatorStore
from service.aggregator.topic_reader import read_to_end

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 5.0
RELOAD_ENCODING_EVERY_S = 5.0


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
    """One aggregator member. ``consumer`` may be a group member or manually assigned (replay)."""

    def __init__(self, settings: AggregatorSettings, redis, producer, consumer):
        self.settings, self.redis, self.producer, self.consumer = settings, redis, producer, consumer
        self.store = AggregatorStore(redis, settings.redis_prefix)
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

    # ---------------------------------------------------------------- one turn
    def apply(self, batch: dict) -> tuple[dict, tuple[int, int, int]]:
        """Steps 2-4 for one poll result ({TopicPartition: [ConsumerRecord]}): decode, apply to
        Redis, dead-letter. Returns (offsets to commit, (messages, events counted, impressions)).
        Touches Redis and the producer but not the consumer, so it may run in a worker thread."""
        from kafka.structs import OffsetAndMetadata

        messages, offsets = [], {}
        for tp, records in batch.items():
            role = self.roles.get(tp.topic, "event")
            for r in records:
                messages.append(RawMessage(role, r.value, r.key, tp.topic, tp.partition, r.offset))
            if records:
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if not messages:
            return {}, (0, 0, 0)
        plan = plan_batch(messages)
        now = time.time()
        drained = self.store.store_impressions(plan.impressions, now)
        counted, refused = self.store.apply_events(plan.events, now, self.settings.pending_max)
        dead = list(plan.dead)
        for i in refused:
            ev, raw = plan.events[i]
            dead.append(
                DeadLetter(
                    f"pending store full ({self.settings.pending_max} events wait for impressions): impression "
                    f"{ev.impression_id!r} unknown",
                    RawMessage("event", raw, ev.impression_id.encode(), self.settings.topic_feedback),
                )
            )
        if dead:
            self.send_dead(dead)
        return offsets, (len(messages), counted + drained, len(plan.impressions))

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
        offsets, counts = self._applying.result()
        self._applying = None
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
        for d in dead:
            log.warning(
                "dead letter from %s[%s]@%s: %s", d.message.topic, d.message.partition, d.message.offset, d.reason
            )
            self.producer.send(self.settings.topic_dead_letter, key=d.message.key, value=d.envelope())
        self.producer.flush()
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
            futures = []
            for iid, imp_json, counts in self.store.load(iids):
                if imp_json is None:
                    continue
                record = build_record(Impression.model_validate_json(imp_json), counts, self.encoding, now)
                futures.append(
                    self.producer.send(
                        self.settings.topic_records, key=iid.encode(), value=record.model_dump_json().encode()
                    )
                )
            self._in_flight.append((futures, iids, now))
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
        self.send_dead(dead)  # acknowledged before the events are forgotten: nothing is lost
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
            if high is not None:
                total += max(0, high - self.consumer.position(tp))
        return total

    def close(self) -> None:
        """Commit what was applied, publish what is due, stop the worker."""
        self.finish_applying()
        self.publish_due(wait=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)


# -------------------------------------------------------------------- process wiring
def make_clients(settings: AggregatorSettings, bootstrap: str, redis_url: str, group: bool = True):
    import redis as redis_lib
    from kafka import KafkaProducer

    from core.infra.broker import group_consumer

    redis = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    # gzip (zlib, in C): behavior records are repetitive JSON, and kafka-python checksums every
    # batch in pure Python (without the optional crc32c package), so fewer bytes is much less CPU.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        compression_type="gzip",
        request_timeout_ms=10_000,
        max_block_ms=10_000,
        batch_size=256 * 1024,
    )
    consumer = group_consumer(
        bootstrap,
        group_id=settings.group_id,
        client_id=f"rlhb-aggregator-{socket.gethostname()}",
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        poll_timeout_ms=settings.poll_timeout_ms,
        max_poll_records=settings.max_poll_records,
    )
    if group:
        consumer.subscribe([settings.topic_impressions, settings.topic_feedback])
    return redis, producer, consumer


def run(settings: AggregatorSettings, stop=None) -> Stats:
    """Run one aggregator member until SIGTERM/SIGINT (or ``stop()`` returns True)."""
    from core.infra.resolve import resolve_infra

    infra = resolve_infra(settings)
    redis, producer, consumer = make_clients(settings, infra.bootstrap, infra.redis_url)
    agg = Aggregator(settings, redis, producer, consumer)
    stopping = {"now": False}

    def _stop(*_):
        stopping["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "aggregator up: group %s on %s, redis %s, prefix %r",
        settings.group_id,
        infra.bootstrap,
        infra.redis_url,
        settings.redis_prefix,
    )
    try:
        while not stopping["now"] and not (stop and stop()):
            agg.turn()
    finally:
        try:
            agg.close()
        finally:
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
        agg = Aggregator(settings, redis, producer, consumer)
        for batch in read_to_end(consumer, parts, max_records=settings.max_poll_records):
            agg.process(batch, commit=False)
        published = agg.publish_due(coalesce_s=0.0, wait=True)
        agg.refit_edges(force=True)
        end = {tp: consumer.position(tp) for tp in parts}
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
