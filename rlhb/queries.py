"""The query corpus: questions nobody on this project wrote, from the ``chatterbot-corpus``
PyPI package (BSD; YAML files of English question/answer pairs), split deterministically
into training and held-out questions.

The split hashes each normalized question, so it does not depend on file order, on the
package version adding questions, or on Python's hash seed: a question is held out on
every machine or on none. Duplicates (the corpus repeats some questions verbatim or with
different case) collapse to one entry before splitting, so the same question never sits
in both splits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

QUESTION_WORDS = (
    "what",
    "who",
    "whom",
    "whose",
    "which",
    "when",
    "where",
    "why",
    "how",
    "is",
    "are",
    "was",
    "were",
    "do",
    "does",
    "did",
    "can",
    "could",
    "should",
    "would",
    "will",
    "tell",
    "explain",
    "describe",
    "name",
    "have",
    "has",
    "my",
    "i",
)
"""First words that make a line a question or a request (``my`` and ``i`` keep the corpus's
tech-support problems such as "My printer is not printing.")."""


@dataclass(frozen=True)
class QuerySplit:
    train: tuple[str, ...]
    held_out: tuple[str, ...]


def corpus_dir(language: str = "english") -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the query corpus needs the `chatterbot-corpus` package: pip install chatterbot-corpus")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / language
    if not path.is_dir():
        raise FileNotFoundError(f"chatterbot-corpus has no {language!r} data folder at {path}")
    return path


def normalize(question: str) -> str:
    """Case- and space-insensitive key used for dedupe and for the split hash."""
    return re.sub(r"\s+", " ", question.strip().lower())


def is_question(text: str) -> bool:
    words = text.strip().lower().split()
    if len(words) < 2:
        return False
    return text.rstrip().endswith("?") or words[0].strip(",.'’") in QUESTION_WORDS


@lru_cache(maxsize=4)
def load_questions(language: str = "english") -> tuple[str, ...]:
    """Unique questions (first turn of each conversation), in a stable sorted order."""
    import yaml

    seen: dict[str, str] = {}
    for path in sorted(corpus_dir(language).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            if not conversation or not isinstance(conversation[0], str):
                continue
            text = re.sub(r"\s+", " ", conversation[0]).strip()
            if is_question(text):
                seen.setdefault(normalize(text), text)
    return tuple(seen[k] for k in sorted(seen))


def _bucket(question: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{normalize(question)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_questions(
    questions: tuple[str, ...] | list[str] | None = None, held_out_fraction: float = 0.3, salt: str = "rlhb-v1"
) -> QuerySplit:
    """Deterministic train / held-out split by a salted hash of each normalized question."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    questions = load_questions() if questions is None else questions
    train, held = [], []
    seen: set[str] = set()
    for q in questions:
        key = normalize(q)
        if key in seen:
            continue
        seen.add(key)
        (held if _bucket(q, salt) < held_out_fraction else train).append(q)
    return QuerySplit(train=tuple(train), held_out=tuple(held))
