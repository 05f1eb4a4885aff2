"""Every impression id the API hands out has its impression logged (issue 16, item 4): a
streaming client gets the id in the headers before the first token, so a client that leaves
then must still find its impression on the topic (flagged ``aborted``), or its feedback would
wait in the aggregator's pending store until it expires.

Real uvicorn server, real HTTP client, real broker and Redis, the tiny model. The only stand-in
is a gate in front of the real backend: it holds a prompt that contains HOLD before its first
token, so the client can leave "before the first token" deterministically."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.helpers.serving import LiveServer, new_topics, serving_settings
from tests.service.api.test_query import read_impressions

HOLD = "HOLD-BEFORE-THE-FIRST-TOKEN"


class GatedBackend:
    """The real backend; a prompt containing HOLD waits (forever, until cancelled) before the
    backend is asked for it."""

    def __init__(self, inner):
        self._inner = inner
        self.held = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def stream(self, request, cancel=None):
        if HOLD in request.prompt:
            self.held += 1
            while True:  # the client leaves; the route's task is cancelled here
                await asyncio.sleep(0.05)
        async for item in self._inner.stream(request, cancel):
            yield item


@pytest.fixture
def gated_api(kafka_bootstrap, redis_url, redis_prefix, tiny_model_dir, tmp_path: Path):
    from service.api.app import create_app, make_backend

    topics = new_topics(kafka_bootstrap)
    settings = serving_settings(tmp_path, kafka_bootstrap, redis_url, redis_prefix, topics, tiny_model_dir)
    backend = GatedBackend(make_backend(settings))
    server = LiveServer(create_app(settings, backend=backend)).start()
    yield server.url, topics, backend
    server.stop()


def _leave_after_headers(client: httpx.Client, path: str, body: dict) -> str:
    """Start a stream, read its headers and first event, and disconnect: returns the id."""
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        iid = r.headers["x-impression-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                assert iid in line  # the id is in the first event too: the client holds it
                break
    return iid  # leaving the block closes the connection mid-stream


def test_a_client_that_leaves_before_the_first_token_still_gets_its_impression_logged(gated_api, kafka_bootstrap):
    url, topics, backend = gated_api
    question = f"{HOLD} What is the capital of France?"
    with httpx.Client(base_url=url, timeout=30) as c:
        left_query = _leave_after_headers(c, "/v1/query", {"query": question, "stream": True})
        left_chat = _leave_after_headers(
            c, "/v1/chat/completions", {"messages": [{"role": "user", "content": question}], "stream": True}
        )
        r = c.post("/v1/query", json={"query": "What is the capital of Spain?", "stream": True})
        assert r.status_code == 200
        complete = r.headers["x-impression-id"]
        done = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ") and "answer" in line]
    assert backend.held == 2  # both left while generation waited for its first token

    got = read_impressions(kafka_bootstrap, topics["impressions"], {left_query, left_chat, complete})
    assert {left_query, left_chat, complete} <= set(got), "an id handed out has no impression on the topic"
    for iid in (left_query, left_chat):
        assert got[iid].aborted and got[iid].response == "" and HOLD in got[iid].query
    assert not got[complete].aborted and got[complete].response == done[-1]["answer"]
