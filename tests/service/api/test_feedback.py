"""POST /v1/feedback against the real app lifespan, the real broker and real Redis."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from core.settings import ApiSettings
from schemas import FEEDBACK_BATCH_LIMIT, FeedbackEvent
from service.api.app import create_app
from service.api.impression_ids import ImpressionSigner

SECRET = "test-impression-secret-0123456789"


@pytest.fixture
def api(kafka_bootstrap, unique_topics, redis_url, redis_prefix):
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        dev_mode=True,
        impression_secret=SECRET,
        serve_model=False,  # feedback needs no generation backend
        topic_feedback=unique_topics["feedback"],
        topic_impressions=unique_topics["impressions"],
        topic_records=unique_topics["records"],
        topic_dead_letter=unique_topics["dead_letter"],
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _iid() -> str:
    return ImpressionSigner(SECRET).new_id()


def _event(iid: str, kind: str = "like", **kw) -> dict:
    return {"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": kind, **kw}


def _read_topic(bootstrap: str, topic: str, want: int, timeout_s: float = 10) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=200).values():
            got.extend(msgs)
    consumer.close()
    return got


def test_single_event_and_batch_are_acknowledged_and_on_the_topic(api, kafka_bootstrap, unique_topics):
    iid = _iid()
    one = _event(iid, "view")
    r = api.post("/v1/feedback", json=one)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}

    batch = [_event(iid, k) for k in ("click", "like", "dwell")]
    batch[2]["value"] = 12.5
    r = api.post("/v1/feedback", json={"events": batch})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 3, "duplicates": 0}

    msgs = _read_topic(kafka_bootstrap, unique_topics["feedback"], 4)
    assert len(msgs) == 4
    assert {m.key for m in msgs} == {iid.encode()}
    events = [FeedbackEvent.model_validate_json(m.value) for m in msgs]
    assert sorted(e.event_id for e in events) == sorted(e["event_id"] for e in [one, *batch])
    assert {e.kind.value: e.value for e in events}["dwell"] == 12.5


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (lambda iid: _event(iid, "love"), 422, "kind"),
        (lambda iid: _event(iid, "like", value=-1), 422, "value must be >= 0"),
        (lambda iid: {"events": [_event(iid), _event(iid, "poke")]}, 422, "events[1].kind"),
        (lambda iid: {"events": [_event(iid), _event(iid, value=-3)]}, 422, "events[1].value"),
        (lambda iid: {"events": []}, 422, "events"),
        (lambda iid: {"events": [_event(iid)] * (FEEDBACK_BATCH_LIMIT + 1)}, 413, str(FEEDBACK_BATCH_LIMIT)),
        (lambda iid: {**_event(iid), "extra": 1}, 422, "extra"),
        (lambda iid: {k: v for k, v in _event(iid).items() if k != "event_id"}, 422, "event_id"),
        (lambda iid: _event("not-a-signed-id"), 422, "'not-a-signed-id' is not an impression id"),
        (lambda iid: _event(iid[:-3] + "AAA"), 422, "bad signature"),
        (lambda iid: {"events": [_event(iid), _event("x.y")]}, 422, "events[1].impression_id"),
        (lambda iid: [1, 2], 422, "JSON object"),
    ],
)
def test_bad_input_gets_4xx_naming_the_problem(api, body, status, needle):
    r = api.post("/v1/feedback", json=body(_iid()))
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_rejected(api, token):
    ev = _event(_iid())
    raw = json.dumps(ev)[:-1] + f', "value": {token}}}'
    r = api.post("/v1/feedback", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "value" in r.json()["detail"] and "finite" in r.json()["detail"]


def test_malformed_json_is_400(api):
    r = api.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["detail"]


def test_rejected_batch_writes_nothing(api, kafka_bootstrap, unique_topics):
    iid = _iid()
    r = api.post("/v1/feedback", json={"events": [_event(iid), _event(iid, "nope")]})
    assert r.status_code == 422
    assert _read_topic(kafka_bootstrap, unique_topics["feedback"], 1, timeout_s=1.5) == []


def test_unresponsive_broker_gives_503_with_retry_after_then_recovers(redis_url, redis_prefix, monkeypatch):
    """The broker process is frozen (SIGSTOP): writes time out -> 503; thawed -> 202 again."""
    from core.infra.broker import EmbeddedBroker
    from service.api.routes import feedback

    monkeypatch.setattr(feedback, "ACK_TIMEOUT_S", 2.0)  # a setting, not a fake: keeps the test short
    broker = EmbeddedBroker().start()
    settings = ApiSettings(
        kafka_bootstrap_servers=broker.bootstrap,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        dev_mode=True,
        impression_secret=SECRET,
        serve_model=False,  # feedback needs no generation backend
        topic_feedback=f"fb-{uuid.uuid4().hex[:8]}",
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.post("/v1/feedback", json=_event(_iid())).status_code == 202
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                r = client.post("/v1/feedback", json=_event(_iid()))
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"].isdigit()
                assert "retry" in r.json()["detail"]
                assert time.monotonic() - start < 5
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            while (r := client.post("/v1/feedback", json=_event(_iid()))).status_code != 202:
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
    finally:
        broker.stop()
