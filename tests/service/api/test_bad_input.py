"""Bad input gets a 4xx whose message names the problem; nothing gives a 500."""

from __future__ import annotations

import httpx
import pytest

from schemas.api import QUERY_MAX_CHARS
from tests.helpers.serving import AUTH

CHAT = "/v1/chat/completions"


def _chat(content="hi", **kw):
    return {"model": "rlhb-latest", "messages": [{"role": "user", "content": content}], **kw}


CASES = [
    # (method, path, json body, headers, status, words the message must contain)
    ("post", "/v1/query", {"query": ""}, {}, 422, ["query"]),
    ("post", "/v1/query", {"query": "   \n "}, {}, 422, ["query is empty"]),
    ("post", "/v1/query", {"query": "x" * (QUERY_MAX_CHARS + 1)}, {}, 422, ["query", str(QUERY_MAX_CHARS)]),
    ("post", "/v1/query", {"query": "hi", "max_tokens": 65}, {}, 422, ["max_tokens=65", "cap of 64"]),
    ("post", "/v1/query", {"query": "hi", "max_tokens": 0}, {}, 422, ["max_tokens"]),
    ("post", "/v1/query", {"query": "hi", "temperature": 9}, {}, 422, ["temperature"]),
    ("post", "/v1/query", {"query": "hi", "bogus": 1}, {}, 422, ["bogus"]),
    ("post", "/v1/query", {"query": "hi " * 1000}, {}, 422, ["query too long", "context"]),
    ("post", CHAT, _chat(model="no-such-version"), {}, 404, ["unknown model", "no-such-version"]),
    ("post", CHAT, _chat(max_tokens=1000), {}, 422, ["max_tokens=1000", "cap"]),
    ("post", CHAT, _chat(content=""), {}, 422, ["empty"]),
    ("post", CHAT, {"messages": []}, {}, 422, ["messages"]),
    ("post", CHAT, {"messages": [{"role": "assistant", "content": "hi"}]}, {}, 422, ["last message", "user"]),
    ("post", CHAT, _chat(n=3), {}, 422, ["n"]),
    ("post", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {}, 422, ["text"]),
    ("get", "/admin/checkpoints", None, {}, 401, ["Bearer"]),
    ("get", "/admin/checkpoints", None, {"Authorization": "Bearer wrong-token"}, 403, ["wrong admin token"]),
    ("post", "/admin/rollback", None, {"Authorization": "Bearer wrong-token"}, 403, ["wrong admin token"]),
    ("post", "/admin/promote/no-such-version", None, AUTH, 404, ["unknown adapter version", "no-such-version"]),
    ("post", "/admin/train", {"algorithm": "magic"}, AUTH, 422, ["algorithm"]),
    (
        "post",
        "/v1/feedback",
        {"event_id": "e1", "impression_id": "forged.signature", "kind": "like"},
        {},
        422,
        ["impression_id", "not an impression id issued by this server"],
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "words"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_a_4xx_with_a_clear_message(serving, method, path, body, headers, status, words):
    r = httpx.request(method, f"{serving.url}{path}", json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    message = r.json()["detail"]
    assert isinstance(message, str)
    assert r.json()["error"]["message"] == message  # OpenAI clients read error.message
    for w in words:
        assert w in message, message


def test_non_json_body_is_422_not_500(serving):
    r = httpx.post(f"{serving.url}/v1/query", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
