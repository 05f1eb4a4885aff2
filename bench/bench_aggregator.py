"""Aggregator throughput: end-to-end events/s vs raw kafka-python consume of the same events.

One run, same broker, same data. The topics are filled first (impressions + feedback with
duplicates, shuffled so events overtake their impressions); then, in alternating rounds:

- peer: a kafka-python consumer-group member polls every message and does nothing else;
- system: one aggregator member (the production ``Aggregator`` loop: decode, atomic Redis
  scripts, dead letters, offset commits, coalesced BehaviorRecord publishing) runs until
  Redis holds the exact ground-truth counts and every record is published.

Both clocks start at the first non-empty poll (the group join, a few seconds on any broker,
is excluded from both) and stop when the last message is consumed (peer) or when counts and
records are complete (system). Prints JSON lines; the last one has the ratio (target >= 0.5).

    .venv/bin/python bench/bench_aggregator.py [--events 50000] [--impressions 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid

BENCH = "aggregator"


def emit(metric: str, value, **extra) -> None:
    print(json.dumps({"bench": BENCH, "metric": metric, "value": value, **extra}), flush=True)


def workload(n_impressions: int, n_events: int, seed: int = 0):
    from schemas import FeedbackEvent, Impression

    rng = random.Random(seed)
    iids = [f"b{seed}-{i}" for i in range(n_impressions)]
    msgs, events, truth = [], [], {}
    for iid in iids:
        imp = Impression(
            impression_id=iid, query=f"q{rng.randint(0, 99)}", behavior="b", response=f"a {iid}", adapter_version="v1"
        )
        msgs.append(("impressions", iid.encode(), imp.model_dump_json().encode()))
    kinds = ["view", "view", "view", "click", "like", "dislike"]
    while len(events) < n_events:
        if events and rng.random() < 0.05:
            ev = rng.choice(events)
        else:
            ev = FeedbackEvent(event_id=uuid.uuid4().hex, impression_id=rng.choice(iids), kind=rng.choice(kinds))
            c = truth.setdefault(ev.impression_id, {})
            c[ev.kind.value] = c.get(ev.kind.value, 0.0) + ev.value
        events.append(ev)
    msgs += [("feedback", e.impression_id.encode(), e.model_dump_json().encode()) for e in events]
    rng.shuffle(msgs)
    return msgs, truth


def raw_consume(bootstrap: str, topics: list[str], total: int, settings) -> float:
    """Seconds from the first non-empty poll until ``total`` messages were polled."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=100,
    )
    got, start = 0, None
    while got < total:
        batch = consumer.poll(timeout_ms=settings.poll_timeout_ms, max_records=settings.max_poll_records)
        n = sum(len(v) for v in batch.values())
        if n and start is None:
            start = time.perf_counter()
        got += n
    elapsed = time.perf_counter() - start
    consumer.close(autocommit=False)
    return elapsed


def aggregate(settings, bootstrap: str, redis_url: str, truth: dict) -> tuple[float, dict]:
    """Seconds from the first non-empty poll until Redis counts == truth and no record is unpublished."""
    from service.aggregator.consumer import Aggregator, make_clients

    redis, producer, consumer = make_clients(settings, bootstrap, redis_url)
    agg = Aggregator(settings, redis, producer, consumer)
    want_total = sum(sum(c.values()) for c in truth.values())
    start = None
    try:
        while True:
            before = agg.stats.messages
            agg.turn()
            if start is None and agg.stats.messages > before:
                start = time.perf_counter()
            if agg.stats.events_counted >= want_total and agg.store.backlog() == 0:
                # events_counted counts distinct events applied; confirm against Redis itself.
                if agg.store.all_counts() == truth:
                    break
        elapsed = time.perf_counter() - start
        return elapsed, dict(agg.stats.__dict__)
    finally:
        agg.close()
        consumer.close(autocommit=False)
        producer.flush(10)
        producer.close(10)
        agg.store.clear()
        redis.delete(settings.redis_prefix + "encoding")
        redis.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--impressions", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()

    import logging

    from kafka import KafkaProducer

    from core.infra.broker import EmbeddedBroker, ensure_topics
    from core.infra.redis_server import resolve_redis_url
    from core.settings import AggregatorSettings
    from service.aggregator.export import latest_per_impression, read_records

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    broker = EmbeddedBroker().start()
    redis_url, redis_server = resolve_redis_url("")
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"bench-{tag}-{k}" for k in ("impressions", "feedback", "records", "dead")}
    try:
        ensure_topics(broker.bootstrap, list(topics.values()), args.partitions)
        msgs, truth = workload(args.impressions, args.events)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
        t0 = time.perf_counter()
        for role, key, value in msgs:
            producer.send(topics[role], key=key, value=value)
        producer.flush()
        produce_s = time.perf_counter() - t0
        producer.close()
        emit("produce_msgs_per_s", round(len(msgs) / produce_s), messages=len(msgs))

        raw_rates, e2e_rates = [], []
        for r in range(args.rounds):
            settings = AggregatorSettings(
                kafka_bootstrap_servers=broker.bootstrap,
                redis_url=redis_url,
                redis_prefix=f"rlhbbench:{tag}:{r}:",
                group_id=f"agg-{tag}-{r}",
                topic_impressions=topics["impressions"],
                topic_feedback=topics["feedback"],
                topic_records=topics["records"],
                topic_dead_letter=topics["dead"],
                max_poll_interval_ms=6000,
                session_timeout_ms=6000,
                coalesce_ms=200,
            )
            raw_s = raw_consume(broker.bootstrap, [topics["impressions"], topics["feedback"]], len(msgs), settings)
            raw_rates.append(len(msgs) / raw_s)
            emit("raw_consume_msgs_per_s", round(raw_rates[-1]), round=r, seconds=round(raw_s, 3))
            e2e_s, stats = aggregate(settings, broker.bootstrap, redis_url, truth)
            e2e_rates.append(len(msgs) / e2e_s)
            emit(
                "e2e_msgs_per_s",
                round(e2e_rates[-1]),
                round=r,
                seconds=round(e2e_s, 3),
                events_counted=stats["events_counted"],
                records_published=stats["records_published"],
                commits=stats["commits"],
            )

        latest = {r.impression_id: r for r in latest_per_impression(read_records(broker.bootstrap, topics["records"]))}
        records_ok = {iid: r.counts for iid, r in latest.items()} == truth
        emit("records_match_truth", records_ok, impressions=len(latest))
        raw, e2e = statistics.median(raw_rates), statistics.median(e2e_rates)
        ratios = [e / r for e, r in zip(e2e_rates, raw_rates, strict=True)]
        emit(
            "summary",
            round(statistics.median(ratios), 3),
            unit="ratio e2e/raw (median over rounds of the paired ratio)",
            ratios=[round(x, 3) for x in ratios],
            target=">= 0.5",
            e2e_msgs_per_s=round(e2e),
            raw_msgs_per_s=round(raw),
            messages=len(msgs),
            events=args.events,
            impressions=args.impressions,
            partitions=args.partitions,
            rounds=args.rounds,
            records_match_truth=records_ok,
        )
    finally:
        broker.stop()
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    main()
