"""/v1/query (plain and SSE), impressions on the topic, /v1/models, /readyz, /metrics and
admin checkpoints/train -- against the shared live API (tiny model, real broker and Redis)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
from kafka import KafkaConsumer, TopicPartition

from schemas.impression import Impression
from service.api.impression_ids import ImpressionSigner
from tests.helpers.serving import AUTH, SECRET


def read_impressions(bootstrap: str, topic: str, want: set[str], timeout_s: float = 20) -> dict[str, Impression]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got: dict[str, Impression] = {}
    deadline = time.monotonic() + timeout_s
    while not want <= set(got) and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=200).values():
            for m in msgs:
                imp = Impression.model_validate_json(m.value)
                assert m.key.decode() == imp.impression_id  # keyed by impression id
                got[imp.impression_id] = imp
    consumer.close()
    return got


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_query_answers_logs_a_signed_impression_and_names_the_version(serving, kafka_bootstrap):
    with httpx.Client(base_url=serving.url, timeout=60) as c:
        r = c.post("/v1/query", json={"query": "What is the capital of France?", "max_tokens": 6})
        assert r.status_code == 200, r.text
        body = r.json()
        serving_now = c.get("/admin/checkpoints", headers=AUTH).json()["serving"]
        custom = c.post(
            "/v1/query",
            json={
                "query": "What is the capital of France?",
                "max_tokens": 6,
                "behavior": "Users disliked this answer at a high rate.",
            },
        ).json()
    assert set(body) == {"answer", "impression_id", "adapter_version", "behavior"}
    assert ImpressionSigner(SECRET).verify(body["impression_id"])
    assert not ImpressionSigner("another-secret-entirely-000000").verify(body["impression_id"])
    assert r.headers["x-impression-id"] == body["impression_id"]
    assert r.headers["x-adapter-version"] == body["adapter_version"] == serving_now
    # default behavior = the most preferred sentence of the rates encoding
    assert body["behavior"] == "Users liked this answer at a high rate and disliked it at a low rate."
    assert custom["behavior"] == "Users disliked this answer at a high rate."

    got = read_impressions(
        kafka_bootstrap, serving.topics["impressions"], {body["impression_id"], custom["impression_id"]}
    )
    imp = got[body["impression_id"]]
    assert imp.query == "What is the capital of France?"
    assert imp.response == body["answer"] and imp.adapter_version == body["adapter_version"]
    assert imp.behavior == body["behavior"] and imp.model
    assert got[custom["impression_id"]].behavior == "Users disliked this answer at a high rate."


def test_query_stream_sends_meta_tokens_done_and_matches_the_plain_answer(serving, kafka_bootstrap):
    with httpx.Client(base_url=serving.url, timeout=60) as c:
        plain = c.post("/v1/query", json={"query": "Name a color.", "max_tokens": 7}).json()
        r = c.post("/v1/query", json={"query": "Name a color.", "max_tokens": 7, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "meta" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"token"}
    meta, done = events[0][1], events[-1][1]
    streamed = "".join(d["text"] for e, d in events if e == "token")
    assert streamed == done["answer"] == plain["answer"]  # greedy: same text streamed or not
    assert meta["impression_id"] == done["impression_id"] == r.headers["x-impression-id"]
    assert done["adapter_version"] == meta["adapter_version"] == plain["adapter_version"]
    assert done["completion_tokens"] <= 7
    got = read_impressions(kafka_bootstrap, serving.topics["impressions"], {done["impression_id"]})
    assert got[done["impression_id"]].response == done["answer"]


def test_models_lists_alias_base_and_versions(serving):
    data = httpx.get(f"{serving.url}/v1/models").json()
    ids = [m["id"] for m in data["data"]]
    assert data["object"] == "list"
    assert ids[:2] == ["rlhb-latest", "base"]
    assert {"v1", "v2", "v3"} <= set(ids)


def test_readyz_reports_model_broker_redis_and_adapter(serving):
    r = httpx.get(f"{serving.url}/readyz")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks["model"]["ok"] and checks["broker"]["ok"] and checks["redis"]["ok"]
    assert checks["adapter"]["serving"] == checks["adapter"]["pointer"]
    assert httpx.get(f"{serving.url}/healthz").json() == {"status": "ok"}


def test_metrics_count_tokens_latency_and_active_version(serving):
    def sample(text: str, name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    before = httpx.get(f"{serving.url}/metrics").text
    httpx.post(f"{serving.url}/v1/query", json={"query": "Count to three.", "max_tokens": 5}, timeout=60)
    after = httpx.get(f"{serving.url}/metrics").text
    assert sample(after, "rlhb_generated_tokens_total") > sample(before, "rlhb_generated_tokens_total")
    assert sample(after, 'rlhb_request_latency_seconds_count{method="POST",route="/v1/query",status="200"}') >= 1
    assert 'rlhb_active_adapter_info{version="' in after
    assert "rlhb_impression_log_failures_total" in after and "rlhb_adapter_load_failures_total" in after


def test_admin_checkpoints_and_train_request(serving):
    with httpx.Client(base_url=serving.url, headers=AUTH) as c:
        cp = c.get("/admin/checkpoints").json()
        r = c.post("/admin/train", json={"reason": "test", "algorithm": "sft"})
    assert {"v1", "v2", "v3"} <= {v["name"] for v in cp["versions"]}
    assert cp["active"] == serving.registry.active()
    assert r.status_code == 202
    queued = json.loads(serving.redis.lindex(f"{serving.settings.redis_prefix}train:requests", -1))
    assert queued["reason"] == "test" and queued["algorithm"] == "sft" and queued["requested_at"] > 0


def test_openapi_documents_the_endpoints(serving):
    paths = httpx.get(f"{serving.url}/openapi.json").json()["paths"]
    for p in (
        "/v1/query",
        "/v1/chat/completions",
        "/v1/models",
        "/admin/promote/{version}",
        "/admin/rollback",
        "/admin/train",
        "/admin/checkpoints",
        "/readyz",
        "/metrics",
    ):
        assert p in paths


def test_feedback_needs_the_client_key_the_answer_came_with(serving):
    """Ids are bound to the asker's client key: the one it sent, or the one the API issued."""
    with httpx.Client(base_url=serving.url, timeout=60) as c:
        issued = c.post("/v1/query", json={"query": "Who wrote Hamlet?", "max_tokens": 4})
        own = c.post(
            "/v1/query",
            json={"query": "Who wrote Hamlet?", "max_tokens": 4},
            headers={"X-Client-Id": "my-session-1234"},
        )
        assert own.headers["x-client-id"] == "my-session-1234"
        key = issued.headers["x-client-id"]
        assert len(key) >= 16 and key != own.headers["x-client-id"]
        for r, client in ((issued, key), (own, "my-session-1234")):
            event = {"event_id": uuid.uuid4().hex, "impression_id": r.json()["impression_id"], "kind": "like"}
            refused = c.post("/v1/feedback", json=event)
            assert refused.status_code == 403 and "X-Client-Id" in refused.json()["detail"]
            ok = c.post("/v1/feedback", json=event, headers={"X-Client-Id": client})
            assert ok.status_code == 202 and ok.json() == {"accepted": 1, "duplicates": 0}, ok.text
