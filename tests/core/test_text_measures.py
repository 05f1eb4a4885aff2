"""The pure text measures in core (used by the gate's behavior guard and the quality report)."""

from __future__ import annotations

import pytest

from core.text_measures import is_refusal, near_empty_share, refusal_share, words


def test_refusal_openings_are_detected_and_ordinary_answers_are_not():
    for text in (
        "I cannot help with that.",
        "I can't do that.",
        "I’m sorry, but I can’t answer.",  # curly apostrophes
        "  i'M SORRY,   but no.",  # case and spacing
        "As an AI language model, I have no opinions.",
        '"I cannot" is all I will say.',  # a leading quote
        "**I'm unable to** browse the web.",  # markdown
    ):
        assert is_refusal(text), text
    for text in (
        "",
        "Sure! Here is how.",
        "Knead the dough well.",
        "I can help: first, gather flour.",
        "Sorry to hear that; try a smaller pan.",
        "Paris is the capital of France, as an aside.",
    ):
        assert not is_refusal(text), text
    assert refusal_share(["I cannot.", "Sure.", "As an AI, no.", "Yes."]) == 0.5
    assert refusal_share([]) == 0.0


def test_near_empty_share_counts_answers_under_the_word_floor():
    answers = ["", "Yes.", "You responded.", "That is right.", "!!!", "Paris is the capital."]
    assert [len(words(a)) for a in answers] == [0, 1, 2, 3, 0, 4]
    assert near_empty_share(answers, 3) == 4 / 6  # "", "Yes.", "You responded.", "!!!"
    assert near_empty_share(answers, 1) == 2 / 6
    assert near_empty_share([], 3) == 0.0


def test_unfinished_share_counts_answers_that_stop_mid_sentence_not_empty_ones():
    from core.text_measures import unfinished_share

    answers = ["It is blue.", "The sky is blue because the", "", "Yes!", "Rayleigh scattering of"]
    assert unfinished_share(answers) == pytest.approx(2 / 5)
    assert unfinished_share([]) == 0.0
