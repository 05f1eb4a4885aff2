"""The query corpus: real questions from chatterbot-corpus, split deterministically."""

from __future__ import annotations

from rlhb.queries import is_question, load_questions, normalize, split_questions


def test_corpus_has_hundreds_of_unique_questions():
    qs = load_questions()
    assert len(qs) > 500
    assert len({normalize(q) for q in qs}) == len(qs)
    assert all(is_question(q) for q in qs)


def test_split_is_deterministic_disjoint_and_order_independent():
    qs = load_questions()
    a = split_questions(qs, held_out_fraction=0.3)
    b = split_questions(tuple(reversed(qs)), held_out_fraction=0.3)
    assert set(a.held_out) == set(b.held_out) and set(a.train) == set(b.train)
    assert not {normalize(q) for q in a.train} & {normalize(q) for q in a.held_out}
    assert len(a.train) + len(a.held_out) == len(qs)
    assert 0.2 < len(a.held_out) / len(qs) < 0.4


def test_duplicates_in_different_case_land_in_one_split_once():
    split = split_questions(["What is AI?", "what is  ai?", "Who are you?"], held_out_fraction=0.5)
    assert len(split.train) + len(split.held_out) == 2


def test_changing_the_salt_changes_the_split():
    qs = load_questions()
    assert set(split_questions(qs, salt="a").held_out) != set(split_questions(qs, salt="b").held_out)
