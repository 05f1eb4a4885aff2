"""Pure text features shared by the simulated users and the quality report.

Standard library only (no numpy, no torch): the simulated users call these on every
answer, and a user model must stay fast and deterministic. The measures the trainer's
publication gate also needs (tokens, words, repeated n-grams, clean endings) live in
``core/text_measures.py`` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.text_measures import ends_cleanly, repeated_ngram_rate, tokens, words  # the one copy lives in core

STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into about over under is are was were be been
    being am do does did doing have has had having i me my mine you your yours he him his she her hers it its we
    us our they them their what which who whom whose when where why how this that these those there here can
    could should would will shall may might must not no yes so than then too very just also any some all each
    tell explain describe name please know think like get got make made does don't isn't aren't what's it's
    i'm you're one two much many more most""".split()
)

CONTENT_WORD_MIN_CHARS = 3
STEM_CHARS = 5
"""Crude stemming by prefix: "thermodynamics"/"thermodynamic" and "printer"/"printing"
share a prefix; good enough to tell on-topic from unrelated text without a model."""


def longest_token_run(text: str) -> int:
    """Longest run of one token repeated back to back ("no no no no" -> 4)."""
    toks = tokens(text)
    best = run = 0
    for i, t in enumerate(toks):
        run = run + 1 if i and t == toks[i - 1] else 1
        best = max(best, run)
    return best


def content_stems(text: str) -> set[str]:
    return {w[:STEM_CHARS] for w in words(text) if len(w) >= CONTENT_WORD_MIN_CHARS and w not in STOPWORDS}


def topic_overlap(question: str, answer: str) -> float | None:
    """Fraction of the question's content stems that the answer mentions; None when the
    question has no content words ("how are you?"), where overlap says nothing."""
    q = content_stems(question)
    if not q:
        return None
    return len(q & content_stems(answer)) / len(q)


@dataclass(frozen=True)
class AnswerFeatures:
    """What a reader notices at a glance."""

    n_words: int
    ends_cleanly: bool
    repeated_ngram_rate: float
    longest_run: int
    topic_overlap: float | None

    @classmethod
    def of(cls, question: str, answer: str) -> AnswerFeatures:
        return cls(
            n_words=len(words(answer)),
            ends_cleanly=ends_cleanly(answer),
            repeated_ngram_rate=repeated_ngram_rate(answer),
            longest_run=longest_token_run(answer),
            topic_overlap=topic_overlap(question, answer),
        )
