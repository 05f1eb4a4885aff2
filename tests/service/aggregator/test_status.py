"""A real aggregator process on the real broker and Redis serves its Prometheus /metrics (events,
dead letters, lag, dedupe hits) and writes its status to Redis; a clean stop reads as down."""

from __future__ import annotations

import time
import uuid

import httpx

from core.infra.ports import free_port
from core.process_status import read_status
from schemas import FeedbackEvent, Impression
from tests.service.aggregator.test_pipeline import Cluster


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _wait(check, timeout_s: float, what: str, logs):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout_s}s\n{logs()}")


def test_aggregator_metrics_and_status(kafka_bootstrap, unique_topics, redis_url, redis_prefix, tmp_path):
    port = free_port()
    c = Cluster(kafka_bootstrap, unique_topics, redis_url, redis_prefix, tmp_path, metrics_port=port,
                status_period_s=0.5)  # fmt: skip
    try:
        proc = c.start()
        iids = [f"imp-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
        c.produce(
            [
                (
                    "impressions",
                    iid.encode(),
                    Impression(impression_id=iid, query="q", behavior="b", response="a", adapter_version="v1")
                    .model_dump_json()
                    .encode(),
                )  # fmt: skip
                for iid in iids
            ]
        )
        # Impressions first, so every event joins at once and the only uncounted event is the re-sent one.
        _wait(lambda: all(c.redis.exists(f"{redis_prefix}agg:imp:{i}") for i in iids), 60, "impressions", c.logs)
        events = [FeedbackEvent(event_id=uuid.uuid4().hex, impression_id=iid, kind="view") for iid in iids]
        events.append(FeedbackEvent(event_id=uuid.uuid4().hex, impression_id=iids[0], kind="like"))
        msgs = [("feedback", e.impression_id.encode(), e.model_dump_json().encode()) for e in events]
        msgs.append(msgs[-1])  # a client retry: same event id
        msgs.append(("feedback", iids[1].encode(), b"not json"))  # a dead letter
        c.produce(msgs)

        def scraped():
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return text if _metric(text, "rlhb_aggregator_messages_total") == 9.0 else None

        # 3 impressions + 6 feedback messages (the retry and the dead letter included)
        text = _wait(scraped, 60, "all 9 messages on /metrics", c.logs)
        assert _metric(text, "rlhb_aggregator_events_counted_total") == 4.0
        assert _metric(text, "rlhb_aggregator_impressions_total") == 3.0
        assert _metric(text, "rlhb_aggregator_dedupe_hits_total") == 1.0
        assert _metric(text, "rlhb_aggregator_dead_letters_total") == 1.0
        assert _metric(text, "rlhb_aggregator_consumer_lag") == 0.0
        assert _metric(text, "rlhb_aggregator_partitions") == 8.0  # 4 + 4 partitions, one member
        assert _metric(text, "rlhb_aggregator_events_per_second") is not None

        status = _wait(
            lambda: (
                (s := read_status(c.redis, redis_prefix, "aggregator"))["state"] == "up"
                and s["members"][0].get("messages") == 9
                and s
            ),
            30,
            "the aggregator status in Redis",
            c.logs,
        )
        member = status["members"][0]
        assert member["dedupe_hits"] == 1 and member["dead_letters"] == 1 and member["lag"] == 0
        assert member["partitions"] == 8 and member["state"] == "running"
    finally:
        c.stop()
    assert proc.returncode == 0, c.logs()
    assert read_status(c.redis.__class__.from_url(redis_url), redis_prefix, "aggregator")["state"] == "down"
