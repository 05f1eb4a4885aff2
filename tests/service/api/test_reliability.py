"""Reliability and security at the API's edge (issue 16): no 500s on hostile input, no exception
text to clients, degraded start without the broker or Redis (and recovery), bounded bodies,
chat fields, caches and outbox, only published versions served, secrets as SecretStr, and an
OpenAPI document that declares the feedback body and the error answers."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import socket
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from core.infra.ports import free_port
from core.settings import ApiSettings
from service.api.app import create_app
from service.api.impression_ids import ImpressionSigner
from tests.helpers.serving import ADMIN, AUTH, SECRET, LiveServer, new_topics, serving_settings

CHAT = "/v1/chat/completions"
Q = {"query": "Is the sky blue?", "max_tokens": 3}


def _event(iid: str | None = None, **kw) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "impression_id": iid or ImpressionSigner(SECRET).new_id(),
        "kind": "like",
        **kw,
    }


def _feedback_settings(bootstrap: str, redis_url: str, prefix: str, tmp_path, **kw) -> ApiSettings:
    fields = dict(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        redis_prefix=prefix,
        dev_mode=True,
        impression_secret=SECRET,
        serve_model=False,  # feedback and admin need no generation backend
        topic_feedback=f"fb-{uuid.uuid4().hex[:8]}",
        state_dir=tmp_path / "state",
        adapter_dir=tmp_path / "adapters",
    )
    fields.update(kw)
    return ApiSettings(**fields)


@pytest.fixture
def feedback_api(kafka_bootstrap, redis_url, redis_prefix, tmp_path):
    with TestClient(create_app(_feedback_settings(kafka_bootstrap, redis_url, redis_prefix, tmp_path))) as client:
        yield client


# --------------------------------------------------------------------------- A: no 500s, no exception text
@pytest.mark.parametrize("iid", ["abc.\u00e9\u00e9", "r\u00e9.sig", "abc.\ud800", "\u4e2d.\u6587"])
def test_non_ascii_impression_id_is_422_not_500(feedback_api, iid):
    body = json.dumps(_event(iid)).encode()  # ensure_ascii: a lone surrogate travels as \\ud800
    r = feedback_api.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "impression_id" in r.json()["detail"]  # a surrogate fails the schema, the others the signature


@pytest.mark.parametrize("shape", ["array", "events"])
def test_feedback_json_nested_100000_levels_is_400_not_500(feedback_api, shape):
    deep = "[" * 100_000 + "]" * 100_000
    body = deep if shape == "array" else '{"events": ' + deep + "}"
    r = feedback_api.post("/v1/feedback", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nests too deeply" in r.json()["detail"]


def test_unhandled_error_is_a_generic_500_with_a_request_id_and_the_details_only_in_the_log(
    kafka_bootstrap, redis_url, redis_prefix, tmp_path, caplog
):
    app = create_app(_feedback_settings(kafka_bootstrap, redis_url, redis_prefix, tmp_path))

    async def boom():
        raise RuntimeError("secret-internal-detail at /srv/private/path")

    app.add_api_route("/test-boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        r = client.get("/test-boom")
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    message = r.json()["detail"]
    assert rid in message and r.json()["error"]["message"] == message
    assert "secret-internal-detail" not in r.text and "RuntimeError" not in r.text
    logged = [rec for rec in caplog.records if getattr(rec, "request_id", "") == rid]
    assert logged and "secret-internal-detail" in (logged[0].exc_text or str(logged[0].exc_info))


# --------------------------------------------------------------------------- B: broker and Redis down
def _poll(what, until, timeout_s: float, step_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if until(got):
            return got
        assert time.monotonic() < deadline, f"gave up waiting; last: {getattr(got, 'text', got)}"
        time.sleep(step_s)


def test_broker_down_from_the_start_then_back(redis_url, redis_prefix, tiny_model_dir, tmp_path):
    """Started with nothing at the broker's address: answers are served (impressions wait in the
    outbox, bounded: a full outbox refuses with 503), feedback answers 503 with a clear body and
    /readyz names the broker; once a broker listens there, feedback is accepted (the producer is
    rebuilt), /readyz says the broker is ok and the outbox drains."""
    from core.infra.broker import EmbeddedBroker, ensure_topics

    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = {k: f"t-{uuid.uuid4().hex[:8]}-{k}" for k in ("impressions", "feedback", "records", "dead_letter")}
    settings = serving_settings(
        tmp_path, bootstrap, redis_url, redis_prefix, topics, tiny_model_dir, outbox_max_pending=2
    )
    broker = None
    try:
        with TestClient(create_app(settings)) as c:
            _poll(lambda: c.get("/readyz").json(), lambda j: j["checks"]["model"]["ok"], 180)
            r = c.post("/v1/feedback", json=_event())
            assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
            assert "broker" in r.json()["detail"] and "retry" in r.json()["detail"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["down"] == ["broker"]
            for _ in range(2):
                assert c.post("/v1/query", json=Q).status_code == 200  # served; the impression waits
            full = c.post("/v1/query", json=Q)
            assert full.status_code == 503 and "impression log is full" in full.json()["detail"], full.text
            assert "outbox" in c.get("/readyz").json()["down"]

            broker = EmbeddedBroker(port=port).start()
            ensure_topics(broker.bootstrap, list(topics.values()), partitions=2)
            _poll(lambda: c.post("/v1/feedback", json=_event()), lambda r: r.status_code == 202, 60, 0.5)
            ready = _poll(lambda: c.get("/readyz"), lambda r: r.status_code == 200, 60)
            assert ready.json()["checks"]["broker"]["ok"] and ready.json()["down"] == []
            assert ready.json()["checks"]["outbox"]["pending"] == 0
            assert c.post("/v1/query", json=Q).status_code == 200
    finally:
        if broker is not None:
            broker.stop()


def test_api_starts_and_answers_without_redis(kafka_bootstrap, tiny_model_dir, tmp_path, caplog):
    """Redis URL pointing at a closed port: the API starts, answers queries and feedback, admin
    answers 503 with Retry-After naming Redis, /readyz names Redis, and nothing blames the broker."""
    topics = new_topics(kafka_bootstrap)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = serving_settings(tmp_path, kafka_bootstrap, dead_redis, "rlhbtest:noredis:", topics, tiny_model_dir)
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as c:
        _poll(lambda: c.get("/readyz").json(), lambda j: j["checks"]["model"]["ok"], 180)
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/query", json=Q)
        assert r.status_code == 200, r.text
        client = {"X-Client-Id": r.headers["x-client-id"]}  # the id is bound to it (without Redis too)
        assert c.post("/v1/feedback", json=_event(r.json()["impression_id"]), headers=client).status_code == 202
        for method, path in (("get", "/admin/checkpoints"), ("post", "/admin/train"), ("post", "/admin/rollback")):
            a = c.request(method, path, headers=AUTH)
            assert a.status_code == 503, (path, a.text)
            assert a.headers["retry-after"].isdigit() and "Redis" in a.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["redis"]
    assert not [rec for rec in caplog.records if "without the broker" in rec.getMessage()]


def test_healthz_answers_at_once_while_feedback_waits_on_a_frozen_broker(
    redis_url, redis_prefix, tmp_path, monkeypatch
):
    from core.infra.broker import EmbeddedBroker
    from service.api.routes import feedback

    monkeypatch.setattr(feedback, "ACK_TIMEOUT_S", 4.0)  # a setting, not a fake: keeps the test short
    broker = EmbeddedBroker().start()
    server = LiveServer(create_app(_feedback_settings(broker.bootstrap, redis_url, redis_prefix, tmp_path)))
    server.thread.start()
    try:
        _poll(lambda: _get(f"{server.url}/healthz"), lambda s: s == 200, 60)
        assert httpx.post(f"{server.url}/v1/feedback", json=_event(), timeout=30).status_code == 202
        os.kill(broker.proc.pid, signal.SIGSTOP)
        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            futures = [
                pool.submit(httpx.post, f"{server.url}/v1/feedback", json=_event(), timeout=30) for _ in range(48)
            ]
            time.sleep(1.0)  # the feedback requests now hold the worker threads, waiting on the broker
            started = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
            waited = time.monotonic() - started
            os.kill(broker.proc.pid, signal.SIGCONT)
            concurrent.futures.wait(futures)
        assert waited < 1.0, f"/healthz took {waited:.1f}s behind the feedback requests"
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
        server.stop()
        broker.stop()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


# --------------------------------------------------------------------------- C: bounded
def _raw_request(url: str, head: str, body: bytes = b"", timeout_s: float = 10.0) -> str:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.decode("latin-1")


@pytest.mark.parametrize("path", ["/v1/query", "/v1/feedback", CHAT, "/admin/train"])
def test_a_150_mb_content_length_is_refused_with_413_before_the_body_is_read(serving, path):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {150 * 1024 * 1024}\r\n\r\n"
    )
    started = time.monotonic()
    answer = _raw_request(serving.url, head, b"{")  # the rest of the body never comes
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "at most" in answer and "RLHB_API_MAX_BODY_BYTES" in answer
    assert time.monotonic() - started < 5


def test_a_streamed_body_without_length_is_cut_at_the_limit_with_413(serving):
    limit = serving.settings.max_body_bytes

    def chunks():
        piece = b" " * 65536
        for _ in range(limit // len(piece) + 4):
            yield piece

    r = httpx.post(f"{serving.url}/v1/query", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert "request body too large" in r.json()["detail"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"bogus_field": 1}, ["bogus_field"]),
        ({"stop": ["x" * 1_000_000]}, ["stop", "at most 128"]),
        ({"stop": "x" * 129}, ["stop", "at most 128"]),
        ({"stop": ["a", "b", "c", "d", "e"]}, ["stop", "at most 4"]),
    ],
    ids=["unknown-field", "megabyte-stop", "long-stop", "five-stops"],
)
def test_chat_refuses_unknown_fields_and_unbounded_stops(serving, extra, words):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    r = httpx.post(f"{serving.url}{CHAT}", json=body, timeout=60)
    assert r.status_code == 422, r.text[:300]
    for w in words:
        assert w in r.json()["detail"], r.json()["detail"]


def test_chat_accepts_openai_fields_it_ignores_and_bounds_messages(serving):
    ok = {
        "messages": [{"role": "user", "content": "hi", "name": "ann"}],
        "max_tokens": 2,
        "seed": 3,
        "user": "u1",
        "presence_penalty": 0.1,
        "logprobs": False,
    }
    assert httpx.post(f"{serving.url}{CHAT}", json=ok, timeout=60).status_code == 200
    big = {"messages": [{"role": "user", "content": "x" * 100_000}], "max_tokens": 2}
    r = httpx.post(f"{serving.url}{CHAT}", json=big, timeout=60)
    assert r.status_code == 422 and "messages[0].content" in r.json()["detail"], r.text[:300]


# --------------------------------------------------------------------------- D: only published, only allowed
def _register(serving, tiny_model_dir, name: str):
    from tests.helpers.adapter_factory import write_test_adapter

    return serving.registry.register(write_test_adapter(tiny_model_dir, serving.registry.root, name, seed=7))


def test_watcher_does_not_serve_a_pointer_to_an_unpublished_version(
    redis_client, redis_prefix, tiny_model_dir, tmp_path
):
    """The pointer names a registered candidate that was never promoted (a raw pointer write by
    anyone with Redis access did this): the watcher refuses it and keeps serving; once the
    registry publishes the version, the same pointer is followed."""
    import asyncio

    from core.registry import Registry
    from service.api.backends.embedded import EmbeddedBackend
    from service.api.hot_swap import AdapterWatcher
    from tests.helpers.adapter_factory import write_test_adapter

    class RawPointer(Registry):
        """The real registry, except that its pointer is whatever ``raw`` says, unchecked."""

        raw = "base"

        def serving(self):
            return self.raw, None

    registry = RawPointer(tmp_path / "adapters", redis_client, redis_prefix)
    version = registry.register(write_test_adapter(tiny_model_dir, registry.root, "cand", seed=5))

    async def run() -> None:
        backend = EmbeddedBackend(tiny_model_dir, batch_window_ms=5, max_batch_size=2, max_loaded_adapters=2)
        await backend.start()
        try:
            watcher = AdapterWatcher(backend, registry, poll_s=0.05, preload_s=0)
            registry.raw = version.name
            await watcher.check()
            assert watcher.current_name == "base" and version.name not in backend.loaded_adapters()
            assert "not published" in watcher.last_error and version.name in watcher.last_error
            registry.promote(version.name)
            watcher._failed.clear()  # retry now instead of after retry_s
            await watcher.check()
            assert watcher.current_name == version.name and watcher.last_error == ""
        finally:
            await backend.close()

    asyncio.run(run())


@pytest.fixture
def no_preload(serving):
    """Pause the shared API's preloading (it loads every newly registered version within 2 s),
    so that a version found loaded was loaded by a request, not by a preload tick."""
    watcher = serving.app.state.rlhb.watcher
    before, watcher.preload_s = watcher.preload_s, 0.0
    yield
    watcher.preload_s = before


def test_clients_may_name_only_the_active_version_a_trial_arm_or_base(serving, tiny_model_dir, no_preload):
    name = f"named-{uuid.uuid4().hex[:6]}"
    _register(serving, tiny_model_dir, name)

    def chat(model: str, headers=None) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return httpx.post(f"{serving.url}{CHAT}", json=body, headers=headers or {}, timeout=60)

    refused = chat(name)
    assert refused.status_code == 403, refused.text
    assert "admin token" in refused.json()["detail"] and name in refused.json()["detail"]
    assert name not in httpx.get(f"{serving.url}/admin/checkpoints", headers=AUTH).json()["loaded"]
    assert chat(name, {"Authorization": "Bearer wrong"}).status_code == 403
    ok = chat(name, AUTH)
    assert ok.status_code == 200 and ok.json()["model"] == name
    active = httpx.get(f"{serving.url}/readyz").json()["checks"]["adapter"]["serving"]
    assert chat(active).status_code == 200 and chat("base").status_code == 200
    assert chat("no-such-version").status_code == 404


# --------------------------------------------------------------------------- E: secrets, OpenAPI
def test_secrets_are_secret_str_and_never_printed():
    s = ApiSettings(admin_token=ADMIN, impression_secret=SECRET)
    assert s.admin_token.get_secret_value() == ADMIN and s.impression_secret.get_secret_value() == SECRET
    assert ADMIN not in repr(s) and SECRET not in repr(s) and ADMIN not in str(s.model_dump())


def test_openapi_declares_the_feedback_body_and_the_error_answers(redis_url, redis_prefix, tmp_path):
    doc = create_app(_feedback_settings("127.0.0.1:9", redis_url, redis_prefix, tmp_path)).openapi()
    post = doc["paths"]["/v1/feedback"]["post"]
    refs = json.dumps(post["requestBody"])
    assert "#/components/schemas/FeedbackEvent" in refs and "#/components/schemas/FeedbackBatch" in refs
    assert {"FeedbackEvent", "FeedbackBatch"} <= set(doc["components"]["schemas"])
    assert {"400", "413", "422", "503"} <= set(post["responses"])
    for path, method, codes in [
        ("/admin/checkpoints", "get", {"401", "403", "413", "503"}),
        ("/admin/promote/{version}", "post", {"401", "403", "404", "409", "413"}),
        ("/admin/rollback", "post", {"401", "403", "409"}),
        ("/admin/train", "post", {"401", "403", "413", "422"}),
        (CHAT, "post", {"403", "404", "409", "413", "422", "503"}),
        ("/v1/query", "post", {"413", "422", "503"}),
    ]:
        assert codes <= set(doc["paths"][path][method]["responses"]), (path, doc["paths"][path][method]["responses"])
    assert doc["paths"]["/admin/promote/{version}"]["post"]["responses"]["409"]["content"]
