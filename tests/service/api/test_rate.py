"""The rating routes (/rate, /v1/rate/*) on a real API: rater tokens, bad input, the
Answer 1/2 -> version mapping as stored, on a SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import random

import httpx
import pytest
from pydantic import SecretStr

from core.ratings_store import RatingPair, RatingsStore
from tests.helpers.postgres import fresh_database
from tests.helpers.rating_api import rater, rating_api

SCORES = {"answer_1": {"quality": "excellent", "satisfaction": "satisfied"},
          "answer_2": {"quality": "bad", "satisfaction": "unsatisfied"}, "preference": "1"}  # fmt: skip


def pairs(n: int, tag: str = "") -> list[RatingPair]:
    """``n`` pairs; ``tag`` keeps one test's tasks apart from another's on the shared server."""
    return [RatingPair(question=f"{tag}q{i}?", version_a="new", answer_a=f"new answer {i}", version_b="old",
                       answer_b=f"old answer {i}") for i in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def sqlite_api(kafka_bootstrap, redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("rate-api")
    store_path = root / "ratings.sqlite3"
    with rating_api(root, kafka_bootstrap, redis_url, str(store_path)) as server:
        yield server, RatingsStore(str(store_path))


@pytest.fixture(scope="module")
def postgres_api(kafka_bootstrap, redis_url, tmp_path_factory):
    with fresh_database() as url:
        with rating_api(tmp_path_factory.mktemp("rate-api-pg"), kafka_bootstrap, redis_url, url) as server:
            yield server, RatingsStore(url)


def rate_all(url: str, store: RatingsStore, who: str) -> None:
    """Rate every pending task through the API (Answer 1 best, preferred) and check what is stored."""
    rated = 0
    while (task := httpx.get(f"{url}/v1/rate/next", headers=rater(who)).json()["task"]) is not None:
        assert "new" not in task and "version_a" not in task  # versions never reach the page
        r = httpx.post(f"{url}/v1/rate/{task['task_id']}", json=SCORES, headers=rater(who))
        assert r.status_code == 200, r.text
        rated += 1
        assert r.json() == {"stored": True, "pending": task["pending"] - 1}
        [stored] = [s for s in store.ratings() if s.task_id == task["task_id"] and s.rater == who]
        # Whichever version was shown first got the excellent scores and the preference.
        first_is_new = task["answer_1"].startswith("new")
        assert stored.rating.preference == ("a" if first_is_new else "b")
        best = (stored.rating.quality_a, stored.rating.satisfaction_a) if first_is_new else (
            stored.rating.quality_b, stored.rating.satisfaction_b)  # fmt: skip
        assert best == ("excellent", "satisfied")
    assert rated > 0


@pytest.mark.parametrize("api", ["sqlite_api", "postgres_api"])
def test_rating_through_the_api(api, request):
    server, store = request.getfixturevalue(api)
    store.add_tasks(pairs(6), random.Random(3))
    rate_all(server.url, store, "bob")
    prefs = {s.rating.preference for s in store.ratings() if s.rater == "bob"}
    assert prefs == {"a", "b"}  # the random order showed each version first at least once
    assert httpx.get(f"{server.url}/v1/rate/next", headers=rater("bob")).json() == {"task": None}
    assert httpx.get(f"{server.url}/v1/rate/next", headers=rater("ann")).json()["task"] is not None


def test_page_and_assets(sqlite_api):
    server, _ = sqlite_api
    page = httpx.get(f"{server.url}/rate")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/rate/rate.js"' in page.text and 'rel="icon" href="data:,"' in page.text
    assert "X-Rater-Token" in httpx.get(f"{server.url}/rate/rate.js").text
    assert httpx.get(f"{server.url}/rate/rate.css").headers["content-type"].startswith("text/css")
    assert httpx.get(f"{server.url}/rate/..%2Fapp.py").status_code == 404
    assert httpx.get(f"{server.url}/rate/app.py").status_code == 404


def test_rater_token_required(sqlite_api):
    server, store = sqlite_api
    store.add_tasks(pairs(1, "token"))
    task_id = pairs(1, "token")[0].task_id
    missing = httpx.get(f"{server.url}/v1/rate/next")
    assert missing.status_code == 401 and "X-Rater-Token" in missing.json()["detail"]
    wrong = httpx.post(f"{server.url}/v1/rate/{task_id}", json=SCORES, headers={"X-Rater-Token": "nope" * 8})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong rater token"
    assert not [s for s in store.ratings() if s.task_id == task_id]


def test_bad_input(sqlite_api):
    server, store = sqlite_api
    store.add_tasks(pairs(1, "bad"))
    task_id = pairs(1, "bad")[0].task_id
    url, who = f"{server.url}/v1/rate/{task_id}", rater("ann")
    great = {**SCORES, "answer_2": {"quality": "great", "satisfaction": "satisfied"}}
    r = httpx.post(url, json=great, headers=who)
    assert r.status_code == 422 and "answer_2.quality" in r.json()["detail"]
    r = httpx.post(url, json={**SCORES, "preference": "both"}, headers=who)
    assert r.status_code == 422 and "preference" in r.json()["detail"]
    r = httpx.post(url, json={**SCORES, "version": "new"}, headers=who)
    assert r.status_code == 422 and "version" in r.json()["detail"]
    assert httpx.post(url, content=b"{", headers={**who, "content-type": "application/json"}).status_code in (
        400, 422)  # fmt: skip
    unknown = httpx.post(f"{server.url}/v1/rate/{'0' * 20}", json=SCORES, headers=who)
    assert unknown.status_code == 404 and "no rating task" in unknown.json()["detail"]
    assert httpx.post(f"{server.url}/v1/rate/../admin", json=SCORES, headers=who).status_code in (404, 422)
    assert httpx.post(f"{server.url}/v1/rate/XYZ", json=SCORES, headers=who).status_code == 422
    assert not [s for s in store.ratings() if s.task_id == task_id and s.rater == "ann"]
    assert httpx.post(url, json=SCORES, headers=who).status_code == 200
    twice = httpx.post(url, json={**SCORES, "preference": "2"}, headers=who)
    assert twice.status_code == 409 and "already rated" in twice.json()["detail"]
    [kept] = [s for s in store.ratings() if s.task_id == task_id and s.rater == "ann"]
    assert kept.rating.preference != "tie"  # the first rating stands


def test_off_without_raters_and_503_when_the_store_is_down(sqlite_api):
    server, _ = sqlite_api
    state = server.server.config.app.state
    settings = state.rlhb.settings
    try:
        state.rlhb.settings = settings.model_copy(update={"rater_tokens": SecretStr("")})
        off = httpx.get(f"{server.url}/v1/rate/next", headers=rater("ann"))
        assert off.status_code == 403 and "RLHB_API_RATER_TOKENS" in off.json()["detail"]
    finally:
        state.rlhb.settings = settings
    store = state.ratings_store
    try:
        state.ratings_store = RatingsStore("postgresql://postgres@127.0.0.1:1/nothing")
        down = httpx.get(f"{server.url}/v1/rate/next", headers=rater("ann"))
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert "127.0.0.1:1" not in down.text  # where the store lives stays in the server log
    finally:
        state.ratings_store = store


def test_malformed_token_header_is_422(sqlite_api):
    server, _ = sqlite_api
    r = httpx.get(f"{server.url}/v1/rate/next", headers={"X-Rater-Token": "has spaces in it"})
    assert r.status_code == 422 and "X-Rater-Token" in r.json()["detail"]
