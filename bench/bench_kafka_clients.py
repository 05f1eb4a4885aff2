"""Raw consume throughput of the Kafka clients the aggregator could use, on the same events.

Candidates for the aggregator's consumer (issue 17 item 4): kafka-python (the one it uses),
confluent-kafka (librdkafka, C) and aiokafka (asyncio, C record parsing). One run, one
embedded tansu broker, the aggregator bench's workload (impressions + feedback, 4
partitions); in each round every installed client reads every message once as a fresh
consumer-group member, in an order rotated round by round (a noisy, shared machine favours
no one position). Each client touches every value's bytes (what the aggregator needs).

Clocks start at the first non-empty poll (the group join is excluded, as in
bench_aggregator.py). Prints JSON lines; the last one holds, per client, the median msgs/s
and the median paired ratio against kafka-python in the same round.

    .venv/bin/python bench/bench_kafka_clients.py [--events 50000] [--impressions 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import time
import uuid

BENCH = "kafka_clients"
PEER = "kafka-python"


def emit(metric: str, value, **extra) -> None:
    print(json.dumps({"bench": BENCH, "metric": metric, "value": value, **extra}), flush=True)


def consume_kafka_python(bootstrap: str, topics: list[str], total: int, batch: int, poll_ms: int) -> float:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"raw-kp-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        fetch_max_wait_ms=100,
    )
    got, nbytes, start = 0, 0, None
    try:
        while got < total:
            polled = consumer.poll(timeout_ms=poll_ms, max_records=batch)
            for records in polled.values():
                if records and start is None:
                    start = time.perf_counter()
                got += len(records)
                nbytes += sum(len(r.value) for r in records)
        return time.perf_counter() - start
    finally:
        consumer.close(autocommit=False)


def consume_confluent(bootstrap: str, topics: list[str], total: int, batch: int, poll_ms: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-cf-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.subscribe(topics)
    got, nbytes, start = 0, 0, None
    try:
        while got < total:
            msgs = consumer.consume(batch, poll_ms / 1000)
            if msgs and start is None:
                start = time.perf_counter()
            for m in msgs:
                if m.error() is None:
                    got += 1
                    nbytes += len(m.value())
        return time.perf_counter() - start
    finally:
        consumer.close()


def consume_aiokafka(bootstrap: str, topics: list[str], total: int, batch: int, poll_ms: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=f"raw-ai-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_poll_records=batch,
        )
        await consumer.start()
        got, nbytes, start = 0, 0, None
        try:
            while got < total:
                polled = await consumer.getmany(timeout_ms=poll_ms, max_records=batch)
                for records in polled.values():
                    if records and start is None:
                        start = time.perf_counter()
                    got += len(records)
                    nbytes += sum(len(r.value) for r in records)
            return time.perf_counter() - start
        finally:
            await consumer.stop()

    return asyncio.run(run())


CLIENTS = {
    "kafka-python": ("kafka", consume_kafka_python),
    "confluent-kafka": ("confluent_kafka", consume_confluent),
    "aiokafka": ("aiokafka", consume_aiokafka),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--impressions", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000, help="messages per poll (the aggregator's max_poll_records)")
    ap.add_argument("--poll-ms", type=int, default=100, help="poll timeout (the aggregator's poll_timeout_ms)")
    args = ap.parse_args()

    import logging

    from bench_aggregator import workload  # the same events as the aggregator bench (bench/ is sys.path[0])
    from kafka import KafkaProducer

    from core.infra.broker import EmbeddedBroker, ensure_topics

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    clients = {name: fn for name, (module, fn) in CLIENTS.items() if importlib.util.find_spec(module) is not None}
    for name in CLIENTS.keys() - clients.keys():
        emit("skipped", name, reason=f"{CLIENTS[name][0]} is not installed")
    broker = EmbeddedBroker().start()
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"bench-{tag}-{k}" for k in ("impressions", "feedback")}
    try:
        ensure_topics(broker.bootstrap, list(topics.values()), args.partitions)
        msgs, _truth = workload(args.impressions, args.events)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
        for role, key, value in msgs:
            producer.send(topics[role], key=key, value=value)
        producer.flush()
        producer.close()
        emit("messages", len(msgs), partitions=args.partitions)

        rates: dict[str, list[float]] = {name: [] for name in clients}
        names = list(clients)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                seconds = clients[name](broker.bootstrap, list(topics.values()), len(msgs), args.batch, args.poll_ms)
                rates[name].append(len(msgs) / seconds)
                emit("consume_msgs_per_s", round(rates[name][-1]), client=name, round=r, seconds=round(seconds, 3))
        per_client = {}
        for name in names:
            ratios = [x / p for x, p in zip(rates[name], rates[PEER], strict=True)]
            per_client[name] = {
                "msgs_per_s": round(statistics.median(rates[name])),
                f"ratio_vs_{PEER}": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
            }
        best = max(names, key=lambda n: per_client[n]["msgs_per_s"])
        emit(
            "summary",
            per_client[best][f"ratio_vs_{PEER}"],
            unit=f"fastest client's msgs/s over {PEER}'s (median over rounds of the paired ratio)",
            fastest=best,
            clients=per_client,
            messages=len(msgs),
            partitions=args.partitions,
            rounds=args.rounds,
        )
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
