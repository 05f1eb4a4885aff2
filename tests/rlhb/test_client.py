"""``rlhb.client`` against the real running API (``serving``: uvicorn, tiny model, real broker and
Redis): an answer comes with an impression id bound to the client id, reactions reach the
feedback topic, a reaction whose answer was lost is retried with the same event id and counted
once, and a refusal is final (no retries)."""

from __future__ import annotations

import json

import httpx
import pytest

from core.impression_ids import ImpressionIds
from rlhb.client import FeedbackError, RlhbClient, event_id_for
from service.aggregator.fold import Fold, RawMessage, plan_batch
from tests.helpers.serving import ADMIN, SECRET
from tests.service.api.conftest import serving  # noqa: F401 - the shared live API fixture
from tests.service.api.test_feedback import _read_topic

QUESTION = "What is the capital of France?"


class LoseFirstAnswers(httpx.BaseTransport):
    """A real network path that loses the answers (not the requests) of the first ``n`` feedback
    POSTs: the server handles them, the client sees a timeout -- the case retries exist for."""

    def __init__(self, n: int):
        self.inner, self.n, self.bodies = httpx.HTTPTransport(), n, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != "/v1/feedback":
            return response
        self.bodies.append(json.loads(request.read()))
        response.read()
        if len(self.bodies) <= self.n:
            raise httpx.ReadTimeout("answer lost (test)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def _events(serving, impression_id: str) -> list[dict]:  # noqa: F811
    """Every feedback event of this impression on the real topic (read to its end)."""
    got = _read_topic(serving.settings.kafka_bootstrap_servers, serving.topics["feedback"], want=10**6, timeout_s=3)
    return [e for e in (json.loads(m.value) for m in got) if e["impression_id"] == impression_id]


def test_ask_returns_a_bound_impression_id_and_reactions_reach_the_topic(serving):  # noqa: F811
    with RlhbClient(serving.url, client_id="quickstart-user-1") as rc:
        answer = rc.ask(QUESTION, max_tokens=4, temperature=0)
        assert isinstance(answer.text, str) and answer.finish_reason in ("stop", "length")
        assert answer.version in {"base", *(v.name for v in serving.versions)}  # not the alias asked for
        ids = ImpressionIds(SECRET)
        assert ids.check(answer.impression_id, "quickstart-user-1")[1] is None
        assert ids.check(answer.impression_id, "someone-else-99")[1].status == 403
        assert rc.view(answer) == {"accepted": 1, "duplicates": 0}
        assert rc.like(answer) == {"accepted": 1, "duplicates": 0}
        assert rc.like(answer) == {"accepted": 0, "duplicates": 1}  # once per (impression, client)
    kinds = sorted(e["kind"] for e in _events(serving, answer.impression_id))
    assert kinds == ["like", "view"]


def test_a_lost_answer_is_retried_with_the_same_event_and_recorded_once(serving):  # noqa: F811
    transport = LoseFirstAnswers(n=2)
    with RlhbClient(serving.url, client_id="retry-user-0001", transport=transport, backoff_s=0.01) as rc:
        answer = rc.ask(QUESTION, max_tokens=4, temperature=0)
        result = rc.like(answer)
    assert len(transport.bodies) == 3 and all(b == transport.bodies[0] for b in transport.bodies)
    assert transport.bodies[0]["event_id"] == event_id_for("retry-user-0001", answer.impression_id, "like")
    # The first attempt was written; the retries were answered as that same like.
    assert result == {"accepted": 0, "duplicates": 1}
    assert [e["kind"] for e in _events(serving, answer.impression_id)] == ["like"]


def test_a_relay_retry_is_written_twice_and_counted_once_by_the_aggregator(serving):  # noqa: F811
    """With the admin token the API keeps the client's event ids and does not dedupe: both
    attempts reach the topic, and the aggregator's semantics (the Fold) count one like."""
    transport = LoseFirstAnswers(n=1)
    with RlhbClient(serving.url, client_id="relay-user-0001", api_key=ADMIN, transport=transport, backoff_s=0.01) as rc:
        answer = rc.ask(QUESTION, max_tokens=4, temperature=0)
        assert rc.like(answer) == {"accepted": 1, "duplicates": 0}
    events = _events(serving, answer.impression_id)
    assert len(events) == 2 and len({e["event_id"] for e in events}) == 1
    bootstrap = serving.settings.kafka_bootstrap_servers
    impressions = [
        RawMessage("impression", m.value)
        for m in _read_topic(bootstrap, serving.topics["impressions"], want=10**6, timeout_s=3)
    ]
    raw_events = [RawMessage("event", json.dumps(e).encode()) for e in events]
    plan = plan_batch([*impressions, *raw_events])
    fold = Fold().apply_all([*plan.impressions, *(ev for ev, _ in plan.events)])
    assert fold.counts[answer.impression_id] == {"like": 1.0}


def test_a_refusal_is_final_and_names_the_reason(serving):  # noqa: F811
    with RlhbClient(serving.url, client_id="asker-00000001") as asker:
        answer = asker.ask(QUESTION, max_tokens=4, temperature=0)
    transport = LoseFirstAnswers(n=0)
    with RlhbClient(serving.url, client_id="stranger-000001", transport=transport, backoff_s=0.01) as other:
        with pytest.raises(FeedbackError) as refused:
            other.like(answer)
        with pytest.raises(ValueError):
            other.feedback(answer, "love")
    assert refused.value.status == 403 and refused.value.attempts == 1 and len(transport.bodies) == 1
    assert "another client" in str(refused.value) or "X-Client-Id" in str(refused.value)


def test_without_openai_asking_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` meets where it is not installed
    with RlhbClient("http://127.0.0.1:9") as rc, pytest.raises(ImportError, match="pip install 'openai"):
        rc.ask(QUESTION)
