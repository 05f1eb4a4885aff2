"""Pure text measures of an answer, shared by the trainer's publication gate (its behavior
guard) and the top floor (simulated users, quality report: ``rlhb/evaluation/text.py``).

Standard library only (no numpy, no torch): the simulated users call these on every answer,
and a user model must stay fast and deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?|[^\sA-Za-z0-9]")
"""Words (with an apostrophe suffix, "don't") and single punctuation marks, so that
"!!!!!!" counts as a repetition just like "the cat the cat the cat"."""

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
TERMINAL_RE = re.compile(r"(?:[.!?…]|```)[\"'”’)\]*_]*\s*$")
"""An answer ends cleanly when its last sentence is closed (optionally followed by a
closing quote, bracket or markdown emphasis) or a code block is closed."""

REFUSAL_OPENINGS = (
    "i cannot",
    "i can't",
    "i can not",
    "i'm sorry, but",
    "i am sorry, but",
    "sorry, but",
    "i'm sorry, i",
    "i am sorry, i",
    "i apologize, but",
    "as an ai",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i won't be able to",
)
"""Openings that mark an answer as a refusal (compared lower-cased, curly apostrophes made
straight, leading quotes/markdown and extra spaces ignored). Deliberately short: it counts the
stock refusals a policy drifts into, not every answer that declines something ("I cannot
stress enough..." is a false positive the guard accepts: it compares shares, parent vs candidate)."""


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN_RE.findall(text)]


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Fraction of the answer's n-grams (over tokens) that repeat an earlier n-gram; 0 when
    the answer has fewer than n + 1 tokens."""
    toks = tokens(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def ends_cleanly(text: str) -> bool:
    return bool(TERMINAL_RE.search(text.strip())) if text.strip() else False


def is_refusal(text: str) -> bool:
    """Whether the answer opens with one of ``REFUSAL_OPENINGS``."""
    opening = " ".join(text.replace("’", "'").lower().split()).lstrip("\"'*_#>-` ")
    return opening.startswith(REFUSAL_OPENINGS)


def is_unfinished(text: str) -> bool:
    """Whether the answer stops mid-sentence (does not end where a sentence can end, ``ends_cleanly``): cut off
    by the token budget, as served. An empty answer is near-empty, not unfinished."""
    return bool(text.strip()) and not ends_cleanly(text)


def unfinished_share(answers: Sequence[str]) -> float:
    """Share of answers that stop mid-sentence (``is_unfinished``; 0 for no answers)."""
    return sum(map(is_unfinished, answers)) / len(answers) if answers else 0.0


def near_empty_share(answers: Sequence[str], min_words: int) -> float:
    """Share of answers with fewer than ``min_words`` words (0 for no answers)."""
    return sum(len(words(a)) < min_words for a in answers) / len(answers) if answers else 0.0


def refusal_share(answers: Sequence[str]) -> float:
    """Share of answers that open like a refusal (``is_refusal``; 0 for no answers)."""
    return sum(is_refusal(a) for a in answers) / len(answers) if answers else 0.0
