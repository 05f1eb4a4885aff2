"""Do the users' own records say that unfinished answers do worse? (``RLHBConfig.finish_priors``)

The demo's default lane carries three "finish the answer" priors: the missing-EOS penalty, D's mid-sentence
fakes and the log D term that lets them reach the policy. They push every population the same way, whatever
its feedback says: on inverted feedback the lane still moved toward finished answers and lifted the real users
(bench/demo_experiments.md E31), so its lifts could not be credited to the feedback. Here the records decide:
the priors stay on only if answers that stop mid-sentence got a significantly lower shaped reward than answers
that end where a sentence can end.

The test: Welch's one-sided t-test (``scipy.stats.ttest_ind``, unequal variances) on the mean
``BehaviorRecord.reward`` ((likes - dislikes) / (views + clicks)), finished minus unfinished. Too few records on
either side is "no evidence", and no evidence keeps the priors off: a prior the users have not confirmed is what
this guards against. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import ttest_ind

from core.text_measures import ends_cleanly, is_unfinished
from schemas.behavior import BehaviorRecord

MIN_RECORDS_PER_SIDE = 8
"""Fewer finished or unfinished records than this: no test (the variance estimate is not worth reading)."""


@dataclass(frozen=True)
class FinishEvidence:
    """What the records say about unfinished answers."""

    finished: int
    """Records whose answer ends where a sentence can end (``core.text_measures.ends_cleanly``)."""
    unfinished: int
    """Records whose answer stops mid-sentence (empty answers count with neither)."""
    reward_finished: float
    """Mean shaped reward of the finished records (nan with none)."""
    reward_unfinished: float
    """Mean shaped reward of the unfinished records (nan with none)."""
    t: float
    """Welch's t of finished minus unfinished (nan when not tested or undefined)."""
    p_value: float
    """One-sided p that finished answers do no better (1.0 when not tested)."""
    alpha: float
    """Significance level the decision used."""

    @property
    def supports_priors(self) -> bool:
        """True when unfinished answers did significantly worse in these records."""
        return self.p_value < self.alpha

    def as_metrics(self) -> dict[str, float]:
        """Flat floats for the trainer's metrics rows."""
        return {
            "finish_priors_on": float(self.supports_priors),
            "finish_records_finished": float(self.finished),
            "finish_records_unfinished": float(self.unfinished),
            "finish_reward_gap": self.reward_finished - self.reward_unfinished,
            "finish_t": self.t,
            "finish_p": self.p_value,
        }

    def describe(self) -> str:
        verdict = "on" if self.supports_priors else "off"
        return (
            f"finish priors {verdict}: mean reward {self.reward_finished:+.3f} over {self.finished} finished "
            f"answers vs {self.reward_unfinished:+.3f} over {self.unfinished} stopped mid-sentence "
            f"(Welch t {self.t:+.2f}, one-sided p {self.p_value:.2g}, alpha {self.alpha:g})"
        )


def finish_evidence(records: Sequence[BehaviorRecord], alpha: float = 0.05) -> FinishEvidence:
    """Compare the shaped reward of finished and unfinished answers in ``records`` (see the module doc)."""
    finished = [r.reward for r in records if ends_cleanly(r.response)]
    unfinished = [r.reward for r in records if is_unfinished(r.response)]
    nan = float("nan")
    t, p = nan, 1.0
    if min(len(finished), len(unfinished)) >= MIN_RECORDS_PER_SIDE:
        result = ttest_ind(finished, unfinished, equal_var=False, alternative="greater")
        if not math.isnan(result.statistic):  # nan: no spread on either side, nothing to read
            t, p = float(result.statistic), float(result.pvalue)
    return FinishEvidence(
        len(finished),
        len(unfinished),
        sum(finished) / len(finished) if finished else nan,
        sum(unfinished) / len(unfinished) if unfinished else nan,
        t,
        p,
        alpha,
    )
