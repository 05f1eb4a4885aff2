"""The API's Redis connections are bounded (RLHB_API_REDIS_MAX_CONNECTIONS), issue 16.

The soak bench found the API's open fds creeping up over 10 minutes: redis-py's default pool
is unbounded and keeps every connection it opened, so the process held as many Redis sockets
as its busiest moment had needed (11 -> 22 within 90 s of 32 clients). Here a private valkey
(so every client in CLIENT LIST is ours) is paused for writes while a burst of feedback
requests arrives: each request's once-per-client claim (a SET NX) is held by the server, so
an unbounded pool opens one connection per request in flight; the bounded one must stay at
its bound, with the other requests waiting for a connection and all of them succeeding."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis

from core.infra.redis_server import EmbeddedRedis
from core.settings import ApiSettings
from service.api.app import create_app
from service.api.impression_ids import ImpressionSigner
from tests.helpers.serving import LiveServer

SECRET = "test-impression-secret-0123456789"
ADMIN = "test-admin-token-0123456789abcdef"
BOUND = 3
REQUESTS = 12
PAUSE_MS = 3000  # long enough for all the requests to reach Redis on a busy machine


@pytest.fixture
def private_redis():
    server = EmbeddedRedis().start()
    yield server
    server.stop()


def _as(client: str) -> dict[str, str]:
    return {"X-Client-Id": client}


def _api_connections(watch: redis.Redis) -> int:
    """Clients of the private valkey other than the test's own connection."""
    mine = watch.client_id()
    return sum(1 for c in watch.client_list() if int(c["id"]) != mine)


def test_a_burst_of_feedback_waits_for_the_bounded_pool_instead_of_opening_sockets(
    private_redis, kafka_bootstrap, unique_topics, tmp_path
):
    settings = ApiSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=private_redis.url,
        redis_prefix="pooltest:",
        dev_mode=False,  # with an admin token: the requests are ordinary clients (relays skip the claim)
        admin_token=ADMIN,
        impression_secret=SECRET,
        serve_model=False,  # feedback needs no generation backend
        state_dir=str(tmp_path / "state"),
        adapter_dir=str(tmp_path / "adapters"),
        topic_feedback=unique_topics["feedback"],
        topic_impressions=unique_topics["impressions"],
        topic_records=unique_topics["records"],
        topic_dead_letter=unique_topics["dead_letter"],
        redis_max_connections=BOUND,
        redis_pool_timeout_s=15,  # longer than the pause: waiting requests must get a connection, not fail
    )
    server = LiveServer(create_app(settings))
    server.thread.start()  # not server.start(): /readyz stays 503 without a model; /healthz follows the lifespan
    watch = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        _burst_under_a_write_pause(server.url, watch)
    finally:
        watch.execute_command("CLIENT", "UNPAUSE")
        watch.close()
        server.stop()


def _burst_under_a_write_pause(url: str, watch: redis.Redis) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)

    signer = ImpressionSigner(SECRET)
    clients = [f"pool-client-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(REQUESTS)]  # one rate bucket each
    bodies = [
        {
            "events": [
                {"event_id": uuid.uuid4().hex, "impression_id": signer.issue(c), "kind": k} for k in ("view", "like")
            ]
        }
        for c in clients
    ]
    results: list[httpx.Response | Exception] = [None] * REQUESTS  # type: ignore[list-item]

    def send(i: int) -> None:
        try:
            results[i] = httpx.post(f"{url}/v1/feedback", json=bodies[i], headers=_as(clients[i]), timeout=60)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[i] = e

    # Writes held by the server for PAUSE_MS: every claim in flight keeps its connection busy.
    watch.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    paused_at = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):  # CLIENT LIST is not a write: answered during the pause
        peak = max(peak, _api_connections(watch))
        time.sleep(0.02)
    peak = max(peak, _api_connections(watch))  # a pool keeps what it opened
    assert time.monotonic() - paused_at >= PAUSE_MS / 1000 - 0.2  # the claims really waited for the pause

    assert all(isinstance(r, httpx.Response) and r.status_code == 202 for r in results), results
    assert [r.json() for r in results] == [{"accepted": 2, "duplicates": 0}] * REQUESTS
    # The bound was reached (the burst did need more) and never passed: the rest waited.
    assert peak == BOUND, f"{peak} Redis connections with a bound of {BOUND}"
    # Each request's claim was really made after its wait (not skipped as "Redis unavailable",
    # which lets events through unchecked): the same events again are all duplicates.
    again = [
        httpx.post(f"{url}/v1/feedback", json=b, headers=_as(c), timeout=30)
        for b, c in zip(bodies, clients, strict=True)
    ]
    assert [(r.status_code, r.json()) for r in again] == [(202, {"accepted": 0, "duplicates": 2})] * REQUESTS
