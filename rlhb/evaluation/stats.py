"""Like rates with confidence intervals, significance against the base, and power.

- Wilson score interval for a proportion (good coverage at small n and near 0 or 1,
  unlike the normal interval).
- Two-proportion z-test (pooled) and Fisher's exact test (scipy) of "the version's like
  rate is higher than the base's": one-sided, since the demo's claim is a rise; the
  two-sided p-value is reported too.
- Power analysis for the two-proportion test: the sample size per arm needed to detect a
  given lift, and the power a given sample size has.

Each evaluation sample is one independent answer judged by one simulated user, so the
Bernoulli model holds (the demo does not count several viewers of one answer as
independent samples).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Proportion:
    k: int
    n: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def _check(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Proportion:
    """Wilson score interval; n = 0 gives the uninformative [0, 1]."""
    _check(k, n)
    if n == 0:
        return Proportion(k=0, n=0, rate=0.0, low=0.0, high=1.0)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Proportion(k=k, n=n, rate=p, low=max(0.0, centre - half), high=min(1.0, centre + half))


@dataclass(frozen=True)
class Comparison:
    """A version's like rate against the base's."""

    lift: float
    """rate(version) - rate(base)."""
    z: float
    p_z_one_sided: float
    """P(Z >= z) under 'no difference': small means the version is better."""
    p_z_two_sided: float
    p_fisher_one_sided: float
    """Fisher's exact test, alternative: the version's like odds are greater."""
    significant: bool
    """p_fisher_one_sided < alpha and p_z_one_sided < alpha."""

    def as_dict(self) -> dict:
        return asdict(self)


def two_proportion_z(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float, float]:
    """Pooled two-proportion z statistic of arm 1 over arm 0; (z, one-sided p, two-sided p)."""
    _check(k1, n1)
    _check(k0, n0)
    if n1 == 0 or n0 == 0:
        return 0.0, 1.0, 1.0
    from scipy.stats import norm

    p1, p0 = k1 / n1, k0 / n0
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 0.0, 1.0, 1.0
    z = (p1 - p0) / se
    return z, float(norm.sf(z)), float(2 * norm.sf(abs(z)))


def compare_to_base(k: int, n: int, k_base: int, n_base: int, alpha: float = 0.05) -> Comparison:
    from scipy.stats import fisher_exact

    z, p_one, p_two = two_proportion_z(k, n, k_base, n_base)
    if n and n_base:
        _, p_fisher = fisher_exact([[k, n - k], [k_base, n_base - k_base]], alternative="greater")
    else:
        p_fisher = 1.0
    lift = (k / n if n else 0.0) - (k_base / n_base if n_base else 0.0)
    return Comparison(
        lift=lift,
        z=z,
        p_z_one_sided=p_one,
        p_z_two_sided=p_two,
        p_fisher_one_sided=float(p_fisher),
        significant=bool(p_fisher < alpha and p_one < alpha),
    )


def required_n_per_arm(p0: float, p1: float, alpha: float = 0.05, power: float = 0.8, one_sided: bool = True) -> int:
    """Samples per arm for the pooled two-proportion z-test to detect p0 -> p1."""
    if not (0 < p0 < 1 and 0 < p1 < 1) or p0 == p1:
        raise ValueError(f"need two different rates strictly between 0 and 1 (got {p0}, {p1})")
    from scipy.stats import norm

    z_a = float(norm.ppf(1 - alpha if one_sided else 1 - alpha / 2))
    z_b = float(norm.ppf(power))
    p_bar = (p0 + p1) / 2
    num = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))
    return math.ceil((num / (p1 - p0)) ** 2)


def power_at_n(p0: float, p1: float, n: int, alpha: float = 0.05, one_sided: bool = True) -> float:
    """Power of the pooled two-proportion z-test with n samples per arm."""
    if n <= 0:
        return 0.0
    from scipy.stats import norm

    z_a = float(norm.ppf(1 - alpha if one_sided else 1 - alpha / 2))
    p_bar = (p0 + p1) / 2
    se0 = math.sqrt(2 * p_bar * (1 - p_bar) / n)
    se1 = math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)
    return float(norm.cdf((abs(p1 - p0) - z_a * se0) / se1))
