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
latest record of every impression and sums per adapter version.
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


class LiveCounts:
    """Views and likes per adapter version, from the latest record of each impression."""

    def __init__(self) -> None:
        self._by_impression: dict[str, tuple[str, float, float, float]] = {}  # iid -> (version, views, likes, t)
        self.totals: dict[str, list[float]] = {}  # version -> [views, likes]

    def add(self, record: BehaviorRecord) -> None:
        old = self._by_impression.get(record.impression_id)
        if old is not None and old[3] > record.updated_at:
            return
        views = float(record.counts.get("view", 0.0))
        likes = float(record.counts.get("like", 0.0))
        if old is not None:
            total = self.totals[old[0]]
            total[0] -= old[1]
            total[1] -= old[2]
        total = self.totals.setdefault(record.adapter_version, [0.0, 0.0])
        total[0] += views
        total[1] += likes
        self._by_impression[record.impression_id] = (record.adapter_version, views, likes, record.updated_at)

    def get(self, version: str) -> tuple[float, float]:
        """(views, likes) of ``version`` (zeros if it never served)."""
        views, likes = self.totals.get(version, (0.0, 0.0))
        return views, likes
