"""The official ``openai`` client, unchanged, against /v1/chat/completions and /v1/models
(served by real uvicorn on a loopback port)."""

from __future__ import annotations

import openai
import pytest

from service.api.impression_ids import ImpressionSigner
from tests.helpers.serving import ADMIN, SECRET

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(serving):
    with openai.OpenAI(base_url=f"{serving.url}/v1", api_key="not-needed", max_retries=0, timeout=60) as c:
        yield c


def test_plain_completion_with_impression_id_in_body_and_header(client, serving):
    raw = client.chat.completions.with_raw_response.create(
        model="rlhb-latest", messages=MESSAGES, max_tokens=6, temperature=0
    )
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert isinstance(resp.choices[0].message.content, str) and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 6 and resp.usage.prompt_tokens > 0
    extra = resp.model_extra
    assert ImpressionSigner(SECRET).verify(extra["impression_id"])
    assert raw.headers["x-impression-id"] == extra["impression_id"]
    assert resp.model == extra["adapter_version"] == raw.headers["x-adapter-version"]


def test_streaming_gives_the_same_text_as_plain(client):
    plain = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=7, temperature=0)
    stream = client.chat.completions.create(
        model="base",
        messages=MESSAGES,
        max_tokens=7,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert {c.model for c in chunks} == {"base"}
    ids = {c.model_extra["impression_id"] for c in chunks}
    assert len(ids) == 1 and ImpressionSigner(SECRET).verify(ids.pop())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


@pytest.fixture
def admin_client(serving):
    """Naming a version other than the active one needs the admin token: OpenAI clients send it as api_key."""
    with openai.OpenAI(base_url=f"{serving.url}/v1", api_key=ADMIN, max_retries=0, timeout=60) as c:
        yield c


def test_named_version_behavior_extension_and_stop(admin_client):
    client = admin_client
    v1 = client.chat.completions.create(
        model="v1",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        extra_body={"behavior": "Users disliked this answer at a high rate."},
    )
    assert v1.model == "v1" and v1.model_extra["behavior"] == "Users disliked this answer at a high rate."
    full = client.chat.completions.create(model="v2", messages=MESSAGES, max_tokens=6, temperature=0)
    text = full.choices[0].message.content
    stop = text.strip()[-3:]
    assert stop, "the test adapter v2 answers with visible text"
    cut = client.chat.completions.create(model="v2", messages=MESSAGES, max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_models_and_errors_through_the_client(client):
    ids = [m.id for m in client.models.list()]
    assert "rlhb-latest" in ids and "base" in ids and "v1" in ids
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert "unknown model 'nope'" in str(e.value)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=10_000)
    assert "cap" in str(e.value)
