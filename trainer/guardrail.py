"""Guardrail: roll back a new adapter version whose live like rate is significantly below
its parent's, watching the counts continuously without inflating the false-alarm rate.

The test is a one-sided **mixture sequential probability ratio test** (mSPRT; Johari,
Pekelis & Walsh, "Always Valid Inference", 2017) on the difference of like rates
theta = p_child - p_parent, with a normal approximation:

    theta_hat = likes_c / views_c - likes_p / views_p
    V         = p_c (1 - p_c) / views_c + p_p (1 - p_p) / views_p        (plug-in variance)
    Lambda    = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta0)^2 / (2 V (V + tau^2)))

with the mixing distribution N(theta0, tau^2) over the alternative and theta0 = -margin.
Rolling back when ``Lambda >= 1 / alpha`` and ``theta_hat < theta0`` keeps the chance of
ever rolling back a version that is not worse than ``margin`` below ``alpha``, however
often the counts are checked (the statistic is an always-valid test: no alpha spending
schedule needed, looks can be as frequent as the counts change).

Thresholds (``GuardrailConfig`` defaults; documented in the README):
- alpha = 0.05: at most a 5% chance of rolling back a version that is as good as its parent;
- tau = 0.05: the mixture is tuned to detect like-rate drops around 5 points quickly;
- margin = 0.0: any significant drop counts (raise it to ignore drops smaller than that);
- min_views = 100 per version before any decision (the normal approximation needs counts);
- rates are clipped to [0.01, 0.99] in V, so 0 likes early on does not make V = 0.

Counts: each view is one trial, each like one success (likes are capped at views). They
come from behavior records (the aggregator's joined totals), ``LiveCounts`` keeps the
latest record of every impression and sums per adapter version, and per A/B trial arm.

Two uses:
- **parent vs child** (``drop_test`` on version totals; ``RLHB_TRAINER_AB_SHARE=0``): the new
  active version against its parent's earlier counts. Simple, but confounded by time: users'
  taste may have drifted between the two periods.
- **A/B trial** (``ab_test``; ``RLHB_TRAINER_AB_SHARE>0``): the candidate's arm against the
  active version's arm, counting only impressions served during that trial (the impression
  records its arm and trial), so both arms saw the same users over the same period. The same
  mSPRT, checked at every look: a significant drop rejects the candidate at once (always
  valid: the chance of ever rejecting a candidate that is not worse stays below alpha); once
  both arms have ``min_views`` views with no significant drop the candidate is promoted (an
  optional stop, which cannot raise the false-rejection rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.behavior import BehaviorRecord


@dataclass(frozen=True)
class GuardrailConfig:
    """Thresholds of the sequential test (see the module docstring)."""

    alpha: float = 0.05
    """Largest chance of rolling back a version that is not worse than its parent."""
    tau: float = 0.05
    """Std of the mixing distribution over the like-rate difference (effect size of interest)."""
    margin: float = 0.0
    """Drops smaller than this (absolute like-rate points) never trigger a rollback."""
    min_views: int = 100
    """Views each version needs before any decision."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"guardrail alpha must be in (0, 1); got {self.alpha}. Typical: 0.05.")
        if not 0 < self.tau < 1:
            raise ValueError(f"guardrail tau must be in (0, 1) (like-rate points); got {self.tau}. Typical: 0.05.")
        if not 0 <= self.margin < 1:
            raise ValueError(f"guardrail margin must be in [0, 1); got {self.margin}.")
        if self.min_views < 1:
            raise ValueError(f"guardrail min_views must be >= 1; got {self.min_views}.")


@dataclass(frozen=True)
class Decision:
    rollback: bool
    statistic: float
    """Lambda, the mixture likelihood ratio (rollback when >= 1 / alpha and the drop is negative)."""
    diff: float
    """theta_hat = child like rate - parent like rate."""
    reason: str


def _rate(likes: float, views: float) -> float:
    return min(likes, views) / views


def drop_test(
    child_likes: float,
    child_views: float,
    parent_likes: float,
    parent_views: float,
    config: GuardrailConfig | None = None,
) -> Decision:
    """One look of the one-sided mSPRT: is the child's like rate significantly below the parent's?"""
    cfg = config or GuardrailConfig()
    if min(child_views, parent_views) < cfg.min_views:
        return Decision(False, 0.0, 0.0, f"waiting for {cfg.min_views} views per version")
    p_c, p_p = _rate(child_likes, child_views), _rate(parent_likes, parent_views)
    diff = p_c - p_p
    clip = lambda p: min(max(p, 0.01), 0.99)  # noqa: E731
    var = clip(p_c) * (1 - clip(p_c)) / child_views + clip(p_p) * (1 - clip(p_p)) / parent_views
    shift = diff + cfg.margin  # theta_hat - theta0
    tau2 = cfg.tau**2
    log_lambda = 0.5 * math.log(var / (var + tau2)) + tau2 * shift**2 / (2 * var * (var + tau2))
    statistic = math.exp(min(log_lambda, 700.0))
    fire = shift < 0 and log_lambda >= math.log(1 / cfg.alpha)
    reason = (
        f"guardrail: live like rate {p_c:.3f} ({child_likes:g}/{child_views:g} views) is below the parent's "
        f"{p_p:.3f} ({parent_likes:g}/{parent_views:g}); mSPRT Lambda={statistic:.3g} >= 1/alpha={1 / cfg.alpha:g}"
        if fire
        else ""
    )
    return Decision(fire, statistic, diff, reason)


@dataclass(frozen=True)
class TrialDecision:
    """One look at an A/B trial: ``outcome`` is "reject", "promote" or "wait"."""

    outcome: str
    statistic: float
    diff: float
    """candidate like rate - active like rate (same period)."""
    reason: str
    candidate: tuple[float, float]
    """(views, likes) of the candidate's arm."""
    active: tuple[float, float]
    """(views, likes) of the active version's arm."""


def ab_test(
    candidate_likes: float,
    candidate_views: float,
    active_likes: float,
    active_views: float,
    min_views: int,
    config: GuardrailConfig | None = None,
) -> TrialDecision:
    """One look at an A/B trial (module docstring): reject on a significant drop of the
    candidate's like rate below the active arm's, promote once both arms have
    ``max(min_views, config.min_views)`` views without one, else wait."""
    cfg = config or GuardrailConfig()
    counts = dict(candidate=(candidate_views, candidate_likes), active=(active_views, active_likes))
    drop = drop_test(candidate_likes, candidate_views, active_likes, active_views, cfg)
    if drop.rollback:
        reason = drop.reason.replace("is below the parent's", "is below the active arm's (same period)")
        return TrialDecision("reject", drop.statistic, drop.diff, f"A/B {reason}", **counts)
    need = max(min_views, cfg.min_views)
    if min(candidate_views, active_views) >= need:
        # Lambda measures how far the two rates are apart in either direction: past 1/alpha with the
        # candidate ahead, the candidate is significantly better; otherwise there is no significant drop.
        threshold = 1 / cfg.alpha
        ahead = drop.diff + cfg.margin >= 0 and drop.statistic >= threshold
        verdict = "the candidate's arm is significantly ahead" if ahead else "no significant drop"
        reason = (
            f"A/B guardrail: live like rate {_rate(candidate_likes, candidate_views):.3f} "
            f"({candidate_likes:g}/{candidate_views:g} views) vs the active arm's "
            f"{_rate(active_likes, active_views):.3f} ({active_likes:g}/{active_views:g}) over the same period: "
            f"{verdict} after {need} views per arm (mSPRT Lambda={drop.statistic:.3g} "
            f"{'>=' if drop.statistic >= threshold else '<'} 1/alpha={threshold:g})"
        )
        return TrialDecision("promote", drop.statistic, drop.diff, reason, **counts)
    return TrialDecision("wait", drop.statistic, drop.diff, f"waiting for {need} views per arm", **counts)


MAX_ARM_ANSWERS = 2000
"""Answers kept per A/B arm for the live behavior guard (a share's precision is about 1/sqrt(n); 2000 is
about 2 MB of text per arm and a few seconds of MiniLM on a CPU)."""


class LiveCounts:
    """Views and likes per adapter version and per A/B trial arm, from the latest record of
    each impression."""

    def __init__(self) -> None:
        # iid -> (version, arm key or None, views, likes, t)
        self._by_impression: dict[str, tuple[str, tuple[str, str] | None, float, float, float]] = {}
        self.totals: dict[str, list[float]] = {}  # version -> [views, likes]
        self.arms: dict[tuple[str, str], list[float]] = {}  # (trial, arm) -> [views, likes]
        # (trial, arm) -> iid -> (query, answer): what each arm served, for the live behavior guard
        self.arm_answers: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}

    def add(self, record: BehaviorRecord) -> None:
        old = self._by_impression.get(record.impression_id)
        if old is not None and old[4] > record.updated_at:
            return
        views = float(record.counts.get("view", 0.0))
        likes = float(record.counts.get("like", 0.0))
        if old is not None:
            for total in (self.totals[old[0]], self.arms[old[1]] if old[1] else None):
                if total is not None:
                    total[0] -= old[2]
                    total[1] -= old[3]
        arm = (record.trial, record.arm) if record.trial and record.arm else None
        for total in (
            self.totals.setdefault(record.adapter_version, [0.0, 0.0]),
            self.arms.setdefault(arm, [0.0, 0.0]) if arm else None,
        ):
            if total is not None:
                total[0] += views
                total[1] += likes
        self._by_impression[record.impression_id] = (record.adapter_version, arm, views, likes, record.updated_at)
        if arm:
            answers = self.arm_answers.setdefault(arm, {})
            if len(answers) < MAX_ARM_ANSWERS or record.impression_id in answers:
                answers[record.impression_id] = (record.query, record.response)

    def get(self, version: str) -> tuple[float, float]:
        """(views, likes) of ``version`` (zeros if it never served)."""
        views, likes = self.totals.get(version, (0.0, 0.0))
        return views, likes

    def answers_of_arm(self, trial: str, arm: str) -> list[tuple[str, str]]:
        """(question, answer) of each impression one arm of ``trial`` served (the first ``MAX_ARM_ANSWERS``)."""
        return list(self.arm_answers.get((trial, arm), {}).values())

    def forget_answers(self, keep_trial: str | None) -> None:
        """Drop the answers kept for every trial but ``keep_trial`` (the running one, or None): ended trials
        need only their counts, and a trainer that re-reads the topic would otherwise keep every trial's."""
        for key in [k for k in self.arm_answers if k[0] != keep_trial]:
            del self.arm_answers[key]

    def get_arm(self, trial: str, arm: str) -> tuple[float, float]:
        """(views, likes) of one arm ("active" | "candidate") of the A/B trial ``trial``
        (its candidate's name), counting only impressions served during that trial."""
        views, likes = self.arms.get((trial, arm), (0.0, 0.0))
        return views, likes
