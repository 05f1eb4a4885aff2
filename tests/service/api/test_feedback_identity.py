"""Feedback identity (issue 16, item 2) against the real app, broker and Redis: ids name their
key (rotation), expire, and are bound to the client key; each count kind is recorded once per
(impression, client) under a server-derived event id; clients are rate-limited; the admin
token makes a trusted relay; without Redis the once-rule falls back to the derived ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from core.impression_ids import ImpressionIds
from core.infra.ports import free_port
from core.settings import ApiSettings
from schemas import FeedbackEvent
from service.api.app import create_app
from service.api.feedback_guard import TokenBuckets, once_event_id
from tests.service.api.test_feedback import _read_topic

SECRET = "test-impression-secret-0123456789"
NEW_SECRET = "test-impression-secret-rotated-000"
ADMIN = "test-admin-token-0123456789abcdef"
CLIENT = "client-0123456789"
OTHER = "client-9876543210"


def _settings(kafka_bootstrap, unique_topics, redis_url, redis_prefix, **kw) -> ApiSettings:
    fields = dict(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        dev_mode=False,  # with an admin token: ordinary clients are not relays
        admin_token=ADMIN,
        impression_secret=SECRET,
        serve_model=False,
        topic_feedback=unique_topics["feedback"],
        topic_impressions=unique_topics["impressions"],
        topic_records=unique_topics["records"],
        topic_dead_letter=unique_topics["dead_letter"],
    )
    fields.update(kw)
    return ApiSettings(**fields)


@pytest.fixture
def make_api(kafka_bootstrap, unique_topics, redis_url, redis_prefix):
    clients = []

    def make(**kw) -> TestClient:
        client = TestClient(create_app(_settings(kafka_bootstrap, unique_topics, redis_url, redis_prefix, **kw)))
        clients.append(client.__enter__())
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _ev(iid: str, kind: str = "like", **kw) -> dict:
    return {"event_id": uuid.uuid4().hex, "impression_id": iid, "kind": kind, **kw}


def _post(api, body, client: str | None = CLIENT, **headers):
    if client is not None:
        headers["X-Client-Id"] = client
    return api.post("/v1/feedback", json=body, headers=headers)


def test_an_id_is_bound_to_its_client_key(make_api):
    api = make_api()
    iid = ImpressionIds(SECRET).issue(CLIENT)
    assert _post(api, _ev(iid, "view")).status_code == 202
    for client in (None, OTHER):
        r = _post(api, _ev(iid, "click"), client=client)
        assert r.status_code == 403, r.text
        assert "issued to another client" in r.json()["detail"] and "X-Client-Id" in r.json()["detail"]
    r = _post(api, _ev(iid), client="short")  # malformed header: 422 naming it
    assert r.status_code == 422 and "X-Client-Id" in r.json()["detail"]


def test_an_expired_id_is_refused_with_410(make_api):
    api = make_api(impression_ttl_s=3600)
    stale = ImpressionIds(SECRET, ttl_s=3600).issue(CLIENT, now=time.time() - 7200)
    r = _post(api, _ev(stale))
    assert r.status_code == 410, r.text
    assert "expired" in r.json()["detail"] and "RLHB_API_IMPRESSION_TTL_S" in r.json()["detail"]


def test_keys_rotate_without_invalidating_ids_in_flight(make_api):
    api = make_api(impression_secret=NEW_SECRET, impression_key_id="k2", impression_old_secrets=f"k1={SECRET}")
    before = ImpressionIds(SECRET, key_id="k1").issue(CLIENT)  # issued before the rotation
    after = ImpressionIds(NEW_SECRET, key_id="k2").issue(CLIENT)
    assert _post(api, {"events": [_ev(before), _ev(after)]}).json() == {"accepted": 2, "duplicates": 0}
    retired = ImpressionIds("a-key-nobody-configures-0000000", key_id="k0").issue(CLIENT)
    r = _post(api, _ev(retired))
    assert r.status_code == 422 and "'k0'" in r.json()["detail"] and "no longer accepts" in r.json()["detail"]
    forged = ImpressionIds("not-the-secret-of-k2-000000000000", key_id="k2").issue(CLIENT)
    r = _post(api, _ev(forged))
    assert r.status_code == 422 and "bad signature" in r.json()["detail"]


def test_ten_batches_of_likes_for_one_impression_count_once(make_api, kafka_bootstrap, unique_topics):
    """The attack of the bug report: 10 batches of likes for one answer. One like (and one
    dislike, one click) per (impression, client) reaches the topic, under the server's event id;
    dwell keeps the client's event ids (its retries stay idempotent). (The rate limit would stop
    the attack after one batch: raised here to show the once-rule alone.)"""
    api = make_api(feedback_burst=5000)
    iid = ImpressionIds(SECRET).issue(CLIENT)
    answers = [_post(api, {"events": [_ev(iid) for _ in range(100)]}).json() for _ in range(10)]
    assert answers[0] == {"accepted": 1, "duplicates": 99}
    assert all(a == {"accepted": 0, "duplicates": 100} for a in answers[1:])
    dwell = _ev(iid, "dwell", value=3.0)
    r = _post(api, {"events": [_ev(iid, "dislike"), _ev(iid, "click"), _ev(iid, "click"), dwell]})
    assert r.json() == {"accepted": 3, "duplicates": 1}

    events = [
        FeedbackEvent.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, unique_topics["feedback"], 5)
    ]
    assert sorted(e.kind.value for e in events) == ["click", "dislike", "dwell", "like"]
    ids = {e.kind.value: e.event_id for e in events}
    assert ids["like"] == once_event_id(iid, "like") and ids["dwell"] == dwell["event_id"]


def test_a_claim_left_pending_by_a_killed_request_does_not_turn_the_retry_into_a_duplicate(
    make_api, kafka_bootstrap, unique_topics, redis_url, redis_prefix
):
    """The API claims a count event's id before writing it to the broker. A request killed in
    between (kill -9 of the API; found by tests/test_fault_injection.py: 2 of 199 accepted
    impressions never counted) left the claim behind, and the client's retry was answered
    "duplicate" with nothing written. Now the claim is "pending" until the broker acknowledged:
    the retry is written (the aggregator dedupes the derived id), then marked written."""
    import redis as redis_lib

    api = make_api()
    iid = ImpressionIds(SECRET).issue(CLIENT)
    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    key = f"{redis_prefix}feedback:once:{once_event_id(iid, 'like')}"
    r.set(key, "pending", ex=60)  # what the killed request left
    assert _post(api, _ev(iid)).json() == {"accepted": 1, "duplicates": 0}
    assert r.get(key) == "1" and r.ttl(key) > 60  # written now: kept as long as the id lives
    assert _post(api, _ev(iid)).json() == {"accepted": 0, "duplicates": 1}
    events = [
        FeedbackEvent.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, unique_topics["feedback"], 1)
    ]
    assert [e.event_id for e in events] == [once_event_id(iid, "like")]


def test_feedback_is_rate_limited_per_client_with_retry_after(make_api):
    api = make_api(feedback_rate_per_s=0.5, feedback_burst=5)
    mine, theirs = ImpressionIds(SECRET).issue(CLIENT), ImpressionIds(SECRET).issue(OTHER)
    kinds = ["view", "click", "like", "share", "requery"]
    assert _post(api, {"events": [_ev(mine, k) for k in kinds]}).status_code == 202
    r = _post(api, _ev(mine, "dislike"))
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and "too much feedback" in r.json()["detail"]
    assert _post(api, _ev(theirs), client=OTHER).status_code == 202  # another client has its own bucket


def test_the_admin_token_makes_a_trusted_relay(make_api, kafka_bootstrap, unique_topics):
    """A relay (the simulated users' driver, a Q&A site's backend) reports several viewers of one
    answer: no client key, event ids as sent, no once-rule; signatures are still checked."""
    api = make_api()
    iid = ImpressionIds(SECRET).issue(CLIENT)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    likes = [_ev(iid) for _ in range(3)]
    assert _post(api, {"events": likes}, client=None, **auth).json() == {"accepted": 3, "duplicates": 0}
    assert _post(api, _ev("forged.id"), client=None, **auth).status_code == 422
    events = [
        FeedbackEvent.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, unique_topics["feedback"], 3)
    ]
    assert sorted(e.event_id for e in events) == sorted(e["event_id"] for e in likes)


def _legacy_id(secret: str) -> str:
    raw = "legacyRawPart123"
    sig = base64.urlsafe_b64encode(hmac.new(secret.encode(), raw.encode(), hashlib.sha256).digest()[:16])
    return f"{raw}.{sig.rstrip(b'=').decode()}"


def test_old_format_ids_verify_during_the_transition(make_api):
    legacy = _legacy_id(SECRET)
    api = make_api()
    assert _post(api, {"events": [_ev(legacy), _ev(legacy)]}).json() == {"accepted": 1, "duplicates": 1}
    assert _post(api, _ev(legacy), client=OTHER).json() == {"accepted": 0, "duplicates": 1}  # once per impression
    strict = make_api(impression_accept_legacy=False)
    r = _post(strict, _ev(legacy, "view"))
    assert r.status_code == 410 and "old format" in r.json()["detail"]


def test_without_redis_the_derived_event_ids_still_dedupe(kafka_bootstrap, unique_topics, redis_prefix):
    """Redis down: the API cannot claim (fails open, logged) and writes both likes, under the
    same server event id, which the aggregator counts once."""
    settings = _settings(kafka_bootstrap, unique_topics, f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    iid = ImpressionIds(SECRET).issue(CLIENT)
    with TestClient(create_app(settings)) as api:
        for _ in range(2):
            r = _post(api, _ev(iid))
            assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0}, r.text
    events = [
        FeedbackEvent.model_validate_json(m.value) for m in _read_topic(kafka_bootstrap, unique_topics["feedback"], 2)
    ]
    assert [e.event_id for e in events] == [once_event_id(iid, "like")] * 2


def test_token_buckets_refill_and_forget_the_least_recent_clients():
    buckets = TokenBuckets(rate_per_s=2.0, burst=4, max_clients=2)
    assert buckets.take("a", 4, now=0.0) == 0.0
    assert buckets.take("a", 1, now=0.0) == pytest.approx(0.5)
    assert buckets.take("a", 1, now=0.5) == 0.0  # refilled one token
    assert buckets.take("a", 5, now=0.5) > 0  # more than a bucket: never granted, told to wait
    buckets.take("b", 1, now=1.0)
    buckets.take("c", 1, now=1.0)
    assert "a" not in buckets._buckets and len(buckets._buckets) == 2
