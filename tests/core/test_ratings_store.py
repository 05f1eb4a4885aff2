"""The ratings store on both databases (a real SQLite file and the machine's real PostgreSQL),
the Answer 1/2 -> version A/B mapping, and the rater-token setting."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from core.ratings_store import (
    AlreadyRated,
    Rating,
    RatingPair,
    RatingsError,
    RatingsStore,
    Task,
    UnknownTask,
    describe,
    open_store,
    parse_rater_tokens,
)
from tests.helpers.postgres import fresh_database


def pair(i: int, a: str = "v2", b: str = "v1") -> RatingPair:
    return RatingPair(question=f"question {i}?", version_a=a, answer_a=f"A says {i}", version_b=b,
                      answer_b=f"B says {i}")  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "ratings.sqlite3")
    else:
        with fresh_database() as url:
            yield url


def test_tasks_ratings_round_trip(store_url):
    store = RatingsStore(store_url)
    assert store.postgres == store_url.startswith("postgresql://")
    assert store.add_tasks([pair(1), pair(2)], random.Random(0)) == 2
    assert store.add_tasks([pair(1), pair(2), pair(3)], random.Random(0)) == 1  # same content: skipped
    assert store.task_count() == 3 and store.pending("ann") == 3

    first = store.next_task("ann")
    assert first is not None and first.question == "question 1?"  # oldest first
    shown = first.shown()
    assert set(shown) == {"A says 1", "B says 1"}
    # Answer 1 excellent/satisfied and preferred; the store must file it under the right version.
    rating = Rating.from_shown(first, ("excellent", "satisfied"), ("bad", "unsatisfied"), "1")
    store.add_rating(first.id, "ann", rating)
    with pytest.raises(AlreadyRated):
        store.add_rating(first.id, "ann", rating)
    with pytest.raises(UnknownTask):
        store.add_rating("0" * 20, "ann", rating)

    assert store.pending("ann") == 2 and store.pending("bob") == 3
    assert store.next_task("ann").question == "question 2?"
    # bob gets the least-rated task first: not the one ann already rated
    assert store.next_task("bob").question == "question 2?"

    # A second store object on the same URL (a restart) reads what the first wrote.
    [stored] = RatingsStore(store_url).ratings()
    winner = "a" if shown[0] == "A says 1" else "b"
    assert (stored.task_id, stored.rater, stored.version_a, stored.version_b) == (first.id, "ann", "v2", "v1")
    assert stored.rating.preference == winner
    best = (stored.rating.quality_a, stored.rating.satisfaction_a) if winner == "a" else (
        stored.rating.quality_b, stored.rating.satisfaction_b)  # fmt: skip
    assert best == ("excellent", "satisfied")


def test_answer_order_is_random_and_kept(store_url):
    store = RatingsStore(store_url)
    store.add_tasks([pair(i) for i in range(40)], random.Random(1))
    orders = [store.get_task(p.task_id).b_first for p in (pair(i) for i in range(40))]
    assert 8 <= sum(orders) <= 32  # both orders occur (seeded: 40 fair coin flips)
    again = [store.get_task(pair(i).task_id).b_first for i in range(40)]
    assert again == orders  # the page shows a task the same way every time


@pytest.mark.parametrize("b_first", [False, True])
def test_from_shown_maps_positions_to_versions(b_first):
    task = Task("t" * 20, "q", "va", "answer of A", "vb", "answer of B", b_first)
    first, second = task.shown()
    assert first == ("answer of B" if b_first else "answer of A")
    r = Rating.from_shown(task, ("good", "partially"), ("medium", "unsatisfied"), "1")
    a, b = ("medium", "unsatisfied"), ("good", "partially")
    if not b_first:
        a, b = b, a
    assert ((r.quality_a, r.satisfaction_a), (r.quality_b, r.satisfaction_b)) == (a, b)
    assert r.preference == ("b" if b_first else "a")
    assert Rating.from_shown(task, a, b, "2").preference == ("a" if b_first else "b")
    assert Rating.from_shown(task, a, b, "tie").preference == "tie"
    with pytest.raises(RatingsError, match="preference"):
        Rating.from_shown(task, a, b, "3")


def test_rating_refuses_unknown_categories():
    with pytest.raises(RatingsError, match="quality_a: 'great'"):
        Rating("great", "satisfied", "bad", "satisfied", "a")
    with pytest.raises(RatingsError, match="satisfaction_b"):
        Rating("good", "satisfied", "bad", "happy", "a")


def test_pair_validation():
    with pytest.raises(ValidationError, match="question"):
        RatingPair(question="  ", version_a="a", answer_a="x", version_b="b", answer_b="y")
    assert pair(1).task_id == pair(1).task_id != pair(2).task_id


def test_default_store_is_sqlite_under_state_dir(tmp_path):
    store = open_store("", tmp_path)
    assert not store.postgres and store.path == tmp_path / "ratings.sqlite3"
    assert open_store("sqlite:///" + str(tmp_path / "x.db"), tmp_path).path == tmp_path / "x.db"
    assert describe("postgresql://u:hunter2@db:5432/r") == "postgresql://u:***@db:5432/r"
    assert describe("postgresql://u@db/r") == "postgresql://u@db/r"


def test_unreachable_postgres_is_a_clear_error():
    with pytest.raises(RatingsError, match="cannot connect"):
        RatingsStore("postgresql://postgres@127.0.0.1:1/nothing").task_count()


def test_rater_tokens_setting():
    from core.settings import ApiSettings

    raters = parse_rater_tokens("ann=token-of-ann-0123456789, token-without-a-name-0123")
    assert raters["token-of-ann-0123456789"] == "ann"
    assert raters["token-without-a-name-0123"].startswith("rater-")
    with pytest.raises(ValueError, match="share a token"):
        parse_rater_tokens("a=same-token-0123456789,b=same-token-0123456789")
    with pytest.raises(ValueError, match="name=token"):
        parse_rater_tokens("bad name=token-0123456789abcdef")
    good = dict(dev_mode=False, admin_token="a" * 32, impression_secret="s" * 32)
    assert ApiSettings(**good, rater_tokens="ann=" + "r" * 20).rater_tokens.get_secret_value()
    with pytest.raises(ValidationError, match="RLHB_API_RATER_TOKENS"):
        ApiSettings(**good, rater_tokens="ann=short")
    ApiSettings(dev_mode=True, rater_tokens="ann=short")  # dev mode allows short tokens


def test_database_errors_become_one_clear_error(tmp_path):
    (tmp_path / "not-a-db.sqlite3").write_text("this is not a SQLite file, but some text " * 100)
    with pytest.raises(RatingsError, match="ratings store .*not-a-db.sqlite3: DatabaseError"):
        RatingsStore(str(tmp_path / "not-a-db.sqlite3")).task_count()
