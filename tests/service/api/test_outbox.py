"""Impressions are not lost: with the broker down the answer is still returned and the
impression waits in the durable local outbox -- across an API restart -- until the broker
is back, then it is on the topic."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from core.infra.broker import EmbeddedBroker, ensure_topics
from service.api.app import create_app
from tests.helpers.serving import new_topics, serving_settings, wait_ready
from tests.service.api.test_query import read_impressions

Q = {"query": "Is the sky blue?", "max_tokens": 3}


def metric(client, name: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in client.get("/metrics").text.splitlines() if x.startswith(name))


def test_outbox_survives_broker_outage_and_api_restart_then_flushes(redis_url, redis_prefix, tiny_model_dir, tmp_path):
    broker = EmbeddedBroker().start()
    port = broker.port
    try:
        topics = new_topics(broker.bootstrap)
        settings = serving_settings(tmp_path, broker.bootstrap, redis_url, redis_prefix, topics, tiny_model_dir)
        ids: list[str] = []
        with TestClient(create_app(settings)) as c:
            wait_ready("", client=c)
            ids.append(c.post("/v1/query", json=Q).json()["impression_id"])  # broker up: straight to the topic
            assert read_impressions(broker.bootstrap, topics["impressions"], set(ids)).keys() == set(ids)
            broker.proc.kill()  # the broker crashes
            broker.proc.wait()
            started = time.monotonic()
            for _ in range(3):
                r = c.post("/v1/query", json=Q)
                assert r.status_code == 200, r.text  # the answer does not wait for the broker
                ids.append(r.json()["impression_id"])
            assert time.monotonic() - started < 15
            ready = c.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"]
            assert ready.json()["checks"]["outbox"]["pending"] >= 3

        # API restart while the broker is still down: it starts degraded and keeps answering
        with TestClient(create_app(settings)) as c:
            deadline = time.monotonic() + 120
            while c.get("/readyz").json()["checks"]["model"]["ok"] is not True:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            r = c.post("/v1/query", json=Q)
            assert r.status_code == 200
            ids.append(r.json()["impression_id"])
            assert c.get("/readyz").json()["checks"]["outbox"]["pending"] == 4  # 3 from before + 1
            deadline = time.monotonic() + 10
            while metric(c, "rlhb_impression_log_failures_total") < 1:
                assert time.monotonic() < deadline, "the failed write was not counted"
                time.sleep(0.2)

            broker = EmbeddedBroker(port=port).start()  # the broker is back (empty: recreate the topics)
            ensure_topics(broker.bootstrap, list(topics.values()), partitions=2)
            deadline = time.monotonic() + 60
            while c.get("/readyz").json()["checks"]["outbox"]["pending"] > 0:
                assert time.monotonic() < deadline, "the outbox was not flushed"
                time.sleep(0.3)
            assert metric(c, "rlhb_outbox_pending") == 0
        got = read_impressions(broker.bootstrap, topics["impressions"], set(ids[1:]))
        assert set(ids[1:]) <= set(got)
        assert all(got[i].query == Q["query"] for i in ids[1:])
    finally:
        broker.stop()
