"""Aggregator throughput: end-to-end events/s vs raw kafka-python consume of the same events.

One run, same broker, same data. The topics are filled first (impressions + feedback with
duplicates, shuffled so events overtake their impressions); then, in alternating rounds:

- peer: a kafka-python consumer-group member polls every message and does nothing else;
- system: one aggregator member (the production ``Aggregator`` loop: decode, atomic Redis
  scripts, dead letters, offset commits, coalesced BehaviorRecord publishing) runs until
  Redis holds the exact ground-truth counts and every record is published.

Both clocks start at the first non-empty poll (the group join, a few seconds on any broker,
is excluded from both) and stop when the last message is consumed (peer) or when counts and
records are complete (system). Each round runs every client of ``--clients``
(RLHB_AGG_KAFKA_CLIENT: kafka-python, confluent) against a raw consume with the same client,
in an order rotated round by round. ``--members 1,2,4`` adds N aggregator processes in one
group on fresh topics (joined first, then the data is sent): msgs/s against 1 process.
Prints JSON lines; the last one has the ratio (target >= 0.5).

    .venv/bin/python bench/bench_aggregator.py [--events 50000] [--impressions 2000] [--rounds 3]
        [--clients kafka-python,confluent] [--members 1,2,4] [--crc32c installed|python]

``--crc32c python`` runs kafka-python's pure-Python CRC32C instead of the ``crc32c`` package (the dependency that
replaced it): run it and the default in turns for the package's effect.
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


def raw_consume(bootstrap: str, topics: list[str], total: int, settings, client: str = "kafka-python") -> float:
    """Seconds from the first non-empty poll until ``total`` messages were polled, with ``client``."""
    if client == "confluent":
        from bench_kafka_clients import consume_confluent  # bench/ is sys.path[0]

        return consume_confluent(bootstrap, topics, total, settings.max_poll_records, settings.poll_timeout_ms)
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


def _member(settings, bootstrap: str, redis_url: str, slot: int, counted, assigned, stop) -> None:
    """One aggregator process of the scaling run: the production loop until ``stop`` is set,
    reporting its partitions and its distinct events counted through shared memory."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from service.aggregator.consumer import Aggregator, make_clients

    redis, producer, consumer = make_clients(settings, bootstrap, redis_url)
    agg = Aggregator(settings, redis, producer, consumer)
    try:
        while not stop.is_set():
            agg.turn()
            counted[slot] = agg.stats.events_counted
            assigned[slot] = len(consumer.assignment())
    finally:
        agg.close()
        consumer.close(autocommit=False)
        producer.flush(10)
        producer.close(10)
        redis.close()


def scaling(settings, bootstrap: str, redis_url: str, topics: dict, msgs, truth: dict, members: int) -> float:
    """Seconds from the first message sent until ``members`` aggregator processes (one consumer
    group) hold the exact counts in Redis with every record published.

    The members join first, on empty topics, and the data is produced only once the group has
    settled (all partitions assigned): the figure is throughput, not rebalancing. The producer is
    confluent-kafka's when installed (so sending is not the bottleneck), else kafka-python's;
    either way it is the same for every member count."""
    import multiprocessing as mp

    from service.aggregator.redis_state import AggregatorStore

    ctx = mp.get_context("spawn")
    counted, assigned, stop = ctx.Array("q", members), ctx.Array("i", members), ctx.Event()
    procs = [
        ctx.Process(target=_member, args=(settings, bootstrap, redis_url, i, counted, assigned, stop))
        for i in range(members)
    ]
    for proc in procs:
        proc.start()
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    store = AggregatorStore(client, settings.redis_prefix)
    want_total = sum(sum(c.values()) for c in truth.values())
    try:
        deadline, settled = time.monotonic() + 120, None
        while time.monotonic() < deadline:  # 2 topics x their partitions, each owned by someone
            full = sum(assigned) == 2 * settings_partitions(bootstrap, topics["impressions"])
            if full and all(a > 0 for a in assigned):
                settled = settled or time.monotonic()
                if time.monotonic() - settled > 2.0:
                    break
            else:
                settled = None
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the group did not settle: assigned {list(assigned)}")
        start = time.perf_counter()
        produce(bootstrap, topics, msgs)
        while True:
            if sum(counted) >= want_total and store.backlog() == 0 and store.all_counts() == truth:
                return time.perf_counter() - start
            if time.perf_counter() - start > 600 or not all(p.is_alive() for p in procs):
                raise RuntimeError("the aggregator processes did not reach the truth")
            time.sleep(0.05)
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        store.clear()
        client.delete(settings.redis_prefix + "encoding")
        client.close()


def settings_partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def produce(bootstrap: str, topics: dict, msgs) -> None:
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
        for role, key, value in msgs:
            producer.send(topics[role], key=key, value=value)
        producer.flush()
        producer.close()
        return
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for role, key, value in msgs:
        while True:
            try:
                producer.produce(topics[role], key=key, value=value)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
    producer.flush(60)


def use_crc32c(which: str) -> str:
    """Point kafka-python's CRC32C at the C package or at its pure-Python fallback; returns which one runs.

    kafka-python binds the implementation when ``kafka.record.default_records`` is imported, so the bench patches
    that module's name (producer and consumer both compute it there)."""
    import kafka.record.default_records as default_records
    from kafka.record import util

    if which == "python":
        default_records.calc_crc32c = util.crc32c_py
    return "c" if default_records.calc_crc32c is util.calc_crc32c and util.crc32c_c is not None else "python"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--impressions", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--clients",
        default="kafka-python,confluent",
        help="aggregator consumer clients to run (RLHB_AGG_KAFKA_CLIENT), each against a raw consume with the same "
        "client; confluent is left out when confluent-kafka is not installed",
    )
    ap.add_argument(
        "--members",
        default="",
        help="also measure N aggregator processes in one group, e.g. 1,2,4 (fresh topics, --partitions each), "
        "with the first client of --clients",
    )
    ap.add_argument(
        "--crc32c",
        choices=("installed", "python"),
        default="installed",
        help="kafka-python's record-batch CRC32C: 'installed' (the C `crc32c` package when importable, as deployed) "
        "or 'python' (kafka-python's pure-Python fallback, as before the package was a dependency)",
    )
    args = ap.parse_args()
    emit("crc32c", use_crc32c(args.crc32c))

    import importlib.util
    import logging

    from core.infra.broker import EmbeddedBroker, ensure_topics
    from core.infra.redis_server import resolve_redis_url
    from core.settings import AggregatorSettings
    from service.aggregator.export import latest_per_impression, read_records

    clients = [c for c in args.clients.split(",") if c]
    if "confluent" in clients and importlib.util.find_spec("confluent_kafka") is None:
        clients.remove("confluent")
        emit("skipped", "confluent", reason="confluent-kafka is not installed")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    broker = EmbeddedBroker().start()
    redis_url, redis_server = resolve_redis_url("")
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"bench-{tag}-{k}" for k in ("impressions", "feedback", "records", "dead")}

    def settings_for(name: str, topic_map: dict, client: str) -> AggregatorSettings:
        return AggregatorSettings(
            kafka_bootstrap_servers=broker.bootstrap,
            redis_url=redis_url,
            redis_prefix=f"rlhbbench:{tag}:{name}:",
            group_id=f"agg-{tag}-{name}",
            topic_impressions=topic_map["impressions"],
            topic_feedback=topic_map["feedback"],
            topic_records=topic_map["records"],
            topic_dead_letter=topic_map["dead"],
            max_poll_interval_ms=6000,
            session_timeout_ms=6000,
            coalesce_ms=200,
            kafka_client=client,
        )

    try:
        ensure_topics(broker.bootstrap, list(topics.values()), args.partitions)
        msgs, truth = workload(args.impressions, args.events)
        t0 = time.perf_counter()
        produce_kafka_python(broker.bootstrap, topics, msgs)
        emit("produce_msgs_per_s", round(len(msgs) / (time.perf_counter() - t0)), messages=len(msgs))

        raw_rates = {c: [] for c in clients}
        e2e_rates = {c: [] for c in clients}
        for r in range(args.rounds):
            # Alternate the clients' order round by round: the shared machine's noise favours no one.
            for client in clients[r % len(clients) :] + clients[: r % len(clients)]:
                settings = settings_for(f"{r}-{client}", topics, client)
                read = [topics["impressions"], topics["feedback"]]
                raw_s = raw_consume(broker.bootstrap, read, len(msgs), settings, client)
                raw_rates[client].append(len(msgs) / raw_s)
                emit(
                    "raw_consume_msgs_per_s",
                    round(raw_rates[client][-1]),
                    client=client,
                    round=r,
                    seconds=round(raw_s, 3),
                )
                e2e_s, stats = aggregate(settings, broker.bootstrap, redis_url, truth)
                e2e_rates[client].append(len(msgs) / e2e_s)
                emit(
                    "e2e_msgs_per_s",
                    round(e2e_rates[client][-1]),
                    client=client,
                    round=r,
                    seconds=round(e2e_s, 3),
                    events_counted=stats["events_counted"],
                    records_published=stats["records_published"],
                    commits=stats["commits"],
                )

        latest = {r.impression_id: r for r in latest_per_impression(read_records(broker.bootstrap, topics["records"]))}
        records_ok = {iid: r.counts for iid, r in latest.items()} == truth
        emit("records_match_truth", records_ok, impressions=len(latest))

        def paired(a: list[float], b: list[float]) -> float:
            return round(statistics.median([x / y for x, y in zip(a, b, strict=True)]), 3)

        per_client = {
            c: {
                "e2e_msgs_per_s": round(statistics.median(e2e_rates[c])),
                "raw_msgs_per_s": round(statistics.median(raw_rates[c])),
                "ratio_e2e_vs_raw_same_client": paired(e2e_rates[c], raw_rates[c]),
                "ratios": [round(x / y, 3) for x, y in zip(e2e_rates[c], raw_rates[c], strict=True)],
                # Against the old peer (kafka-python's raw consume) in the same rounds: the absolute win.
                **(
                    {"ratio_e2e_vs_raw_kafka_python": paired(e2e_rates[c], raw_rates["kafka-python"])}
                    if "kafka-python" in clients
                    else {}
                ),
            }
            for c in clients
        }
        if "kafka-python" in clients and "confluent" in clients:
            emit("e2e_confluent_over_kafka_python", paired(e2e_rates["confluent"], e2e_rates["kafka-python"]))

        scale = {}
        if args.members:
            client = clients[0]
            for n in [int(x) for x in args.members.split(",") if x]:
                fresh = {k: f"bench-{tag}-m{n}-{k}" for k in ("impressions", "feedback", "records", "dead")}
                ensure_topics(broker.bootstrap, list(fresh.values()), args.partitions)
                seconds = scaling(
                    settings_for(f"m{n}", fresh, client), broker.bootstrap, redis_url, fresh, msgs, truth, n
                )
                scale[n] = len(msgs) / seconds
                emit("members_msgs_per_s", round(scale[n]), members=n, client=client, seconds=round(seconds, 3))
            if 1 in scale:
                emit(
                    "members_scaling",
                    {str(n): round(v / scale[1], 3) for n, v in scale.items()},
                    unit="msgs/s of N processes over 1 process",
                    client=client,
                    partitions=args.partitions,
                )

        head = clients[0]
        emit(
            "summary",
            per_client[head]["ratio_e2e_vs_raw_same_client"],
            unit=f"ratio e2e/raw with {head} (median over rounds of the paired ratio)",
            clients=per_client,
            target=">= 0.5 (issue 17: >= 0.9 with the same client)",
            messages=len(msgs),
            events=args.events,
            impressions=args.impressions,
            partitions=args.partitions,
            rounds=args.rounds,
            records_match_truth=records_ok,
            **({"members_msgs_per_s": {str(n): round(v) for n, v in scale.items()}} if scale else {}),
        )
    finally:
        broker.stop()
        if redis_server is not None:
            redis_server.stop()


def produce_kafka_python(bootstrap: str, topics: dict, msgs) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    for role, key, value in msgs:
        producer.send(topics[role], key=key, value=value)
    producer.flush()
    producer.close()


if __name__ == "__main__":
    main()
