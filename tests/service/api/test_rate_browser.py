"""The /rate page in real Chromium against a real API: a rater enters the token, clicks one
rating through (both answers' Quality and Satisfaction, a preference, Submit), and the store
holds it under the right versions although the page showed them in random order; then the page
moves on, and a wrong token sends the rater back to the token form."""

from __future__ import annotations

import random

import pytest

from core.ratings_store import RatingPair, RatingsStore
from tests.helpers.browser import open_page
from tests.helpers.rating_api import RATERS, rating_api

# Two tasks: b_first differs between them with this seed, so one of the two clicks-through maps
# Answer 1 to version B (checked below, not assumed).
PAIRS = [
    RatingPair(question="How do I boil an egg?", version_a="v7", answer_a="Simmer it for 9 minutes.",
               version_b="base", answer_b="Eggs are laid by hens."),
    RatingPair(question="What is the capital of Peru?", version_a="v7", answer_a="Lima.",
               version_b="base", answer_b="<b>Cusco</b><script>window.pwned = 1</script>"),
]  # fmt: skip


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("rate-browser")
    store = RatingsStore(str(root / "ratings.sqlite3"))
    store.add_tasks(PAIRS, random.Random(1))
    assert {store.get_task(p.task_id).b_first for p in PAIRS} == {False, True}
    with rating_api(root, kafka_bootstrap, redis_url, store.url) as server:
        yield server, store


def rate_shown_task(page, store, first_quality: str, second_quality: str) -> tuple:
    """Click a rating of the task on screen; return (task, what was clicked)."""
    question = page.locator("#question").inner_text()
    [task] = [store.get_task(p.task_id) for p in PAIRS if p.question == question]
    assert page.locator("#answer-1").inner_text() == task.shown()[0]
    assert page.locator("#answer-2").inner_text() == task.shown()[1]
    submit = page.locator("#submit")
    page.click(f"label:has(#quality-1-{first_quality})")
    page.click("label:has(#satisfaction-1-satisfied)")
    page.click(f"label:has(#quality-2-{second_quality})")
    assert submit.is_disabled()  # not everything chosen yet
    page.click("label:has(#satisfaction-2-partially)")
    page.click("#preference label:has-text('Answer 1')")
    assert submit.is_enabled()
    submit.click()
    return task


def test_click_through_ratings(api):
    server, store = api
    with open_page(f"{server.url}/rate") as page:
        assert page.locator("#login").is_visible() and not page.locator("#task").is_visible()
        page.fill("#token", RATERS["ann"])
        page.click("#start")
        page.locator("#task").wait_for(state="visible")
        assert page.locator("#pending").inner_text() == "2 left to rate"
        assert page.evaluate("window.pwned") is None  # answers are text, never markup

        first = rate_shown_task(page, store, "excellent", "medium")
        page.locator("#pending").filter(has_text="1 left to rate").wait_for()
        [stored] = store.ratings()
        assert (stored.task_id, stored.rater) == (first.id, "ann")
        # Answer 1 (excellent, satisfied, preferred) is version B when B was shown first.
        shown_first = "b" if first.b_first else "a"
        r = stored.rating
        scores = {"a": (r.quality_a, r.satisfaction_a), "b": (r.quality_b, r.satisfaction_b)}
        assert scores[shown_first] == ("excellent", "satisfied")
        assert scores["a" if shown_first == "b" else "b"] == ("medium", "partially")
        assert r.preference == shown_first

        second = rate_shown_task(page, store, "good", "bad")
        page.locator("#done").wait_for(state="visible")
        assert "Nothing left to rate" in page.locator("#done").inner_text()
        assert {s.task_id for s in store.ratings()} == {first.id, second.id}
        assert {first.b_first, second.b_first} == {False, True}
        assert [s.rating.preference for s in store.ratings()] == ["b" if t.b_first else "a" for t in (first, second)]
        assert page.evaluate("sessionStorage.getItem('rlhb-rater-token')") == RATERS["ann"]
        assert RATERS["ann"] not in page.url
        assert page.rlhb_errors == []


def test_wrong_token_returns_to_the_form(api):
    server, store = api
    with open_page(f"{server.url}/rate") as page:
        page.fill("#token", "not-a-rater-token-0123456789")
        page.click("#start")
        page.locator("#status.error").filter(has_text="wrong rater token").wait_for()
        assert page.locator("#login").is_visible() and not page.locator("#task").is_visible()
        assert page.evaluate("sessionStorage.getItem('rlhb-rater-token')") is None
        # the only console error is the browser's own report of the refused request
        assert all("403" in e for e in page.rlhb_errors), page.rlhb_errors
        page.fill("#token", RATERS["bob"])  # a real rater can start after the mistake
        page.click("#start")
        page.locator("#task").wait_for(state="visible")
        assert page.locator("#pending").inner_text() == "2 left to rate"
