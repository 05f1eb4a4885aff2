"""The ceiling of D's held-out AUROC: the best any model could reach on the same held-out pairs (issue 14 item 3).

RLHB's discriminator is measured on held-out records (split by query): each record's real triplet (query
q, answer a, logged sentence b) against the same answer under a behavior-swapped sentence; its AUROC is
``d_heldout_auroc`` (``trainer.algorithms.rlhb``). Is a low AUROC D's fault, or is there little to find?
In a simulation the question has an answer, because the users' taste is known.

The ceiling. The simulated users judge an answer deterministically from (query, answer): a
``Judgement`` with p_like and p_dislike. A record's behavior sentence b is then random only through the
viewing process: V = 1 + Poisson(m - 1) viewers, each likes with p_like, dislikes with p_dislike, or
neither (exclusive: a multinomial), and the like and dislike rates are cut into levels at the fitted
edges. So for every answer the exact distribution of its real sentence, P_real(b | q, a), is known, and
so is the distribution of its swapped sentence: the trainer swaps to a uniformly random logged sentence
whose (like, dislike) levels differ, P_swap(b | q, a) = sum_r P_real(r | q, a) 1[b != r] / |cand(r)|.
The oracle scores a triplet (q, a, b) by the log likelihood ratio

    oracle(q, a, b) = log P_real(b | q, a) - log P_swap(b | q, a)

with P_real under the users' true (p_like, p_dislike) for that answer. This is the Bayes-optimal score
for "real or swapped?" given (q, a, b): by Neyman-Pearson its ROC curve dominates every other score's,
so its AUROC is the most any model that sees only (query, answer, b) can reach in expectation (the
users' judgement is a function of (q, a), so such a model could in principle compute it; what is left,
the viewing noise, no model can remove). It is a ceiling in expectation: on a finite held-out set
another score can beat it by luck, which is why the expected ceiling (the exact AUROC of the oracle
under the two distributions, no sampling) is reported as well (``expected_ceiling``).

Not all of the ceiling comes from the answer: a swap is drawn uniformly among the logged sentences while a
real sentence follows the viewing process, so a sentence that is rare in the logs is more often a swap,
whatever the answer. Users who judge every answer alike still leave a ceiling above 0.5 (the unit tests
show it); a D that ignores the answer can reach that part.

D's share of the ceiling: (AUROC_D - 0.5) / (AUROC_ceiling - 0.5), both on the same pairs. A low
ceiling says the preset is signal-limited (the logged sentence says little about the answer); a high
ceiling with a low share says D is the limit.

Used by ``bench/d_designs.py`` (offline records) and the demo (``rlhb.demo.ceiling``: the trainer's
dumped pairs, ``trainer.heldout_pairs``, judged by the lane's simulated users). The model assumes the
records were encoded with the encoding given here; ``ceiling_on_pairs`` reports the share of pairs
whose logged sentence that encoding reproduces from their counts (the aggregator refits its edges as
traffic comes in, so early records may have been encoded with other edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_VIEWS = 40  # 1 + Poisson(4): P(V > 40) < 1e-20

Probs = tuple[float, float]
"""(p_like, p_dislike) of one answer under the users who judged it."""


# --------------------------------------------------------------------------- the oracle
def view_pmf(viewers_mean: float) -> list[float]:
    """P(V = v) for v = 0..MAX_VIEWS, V = 1 + Poisson(viewers_mean - 1) (rlhb.simulate.records)."""
    lam = viewers_mean - 1
    pmf = [0.0] * (MAX_VIEWS + 1)
    for v in range(1, MAX_VIEWS + 1):
        k = v - 1
        pmf[v] = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) if lam > 0 else float(k == 0)
    total = sum(pmf)
    return [p / total for p in pmf]


def level_table(enc, keys: list[str]) -> dict[tuple[int, int, int], tuple]:
    """(views, likes, dislikes) -> the preference signature the encoding gives those counts."""
    table = {}
    for v in range(1, MAX_VIEWS + 1):
        for lk in range(v + 1):
            for dk in range(v - lk + 1):
                table[(v, lk, dk)] = signature(enc, keys, {"view": v, "click": 0, "like": lk, "dislike": dk})
    return table


def signature(enc, keys: list[str], counts) -> tuple:
    """The (key, level) signature ``enc`` gives ``counts`` on ``keys`` (the pool's preference keys)."""
    b = enc.encode({k: float(counts.get(k, 0.0)) for k in ("view", "click", "like", "dislike")})
    return tuple((k, int(b[k])) for k in keys)


def real_distribution(p_like: float, p_dislike: float, views: list[float], table) -> dict[tuple, float]:
    """P_real(signature | answer): the multinomial viewing model, summed per signature."""
    out: dict[tuple, float] = {}
    p_none = max(0.0, 1.0 - p_like - p_dislike)
    logs = [math.log(x) if x > 0 else -math.inf for x in (p_like, p_dislike, p_none)]
    for v in range(1, MAX_VIEWS + 1):
        if views[v] < 1e-15:
            continue
        for lk in range(v + 1):
            for dk in range(v - lk + 1):
                nk = v - lk - dk
                terms = [c * lg for c, lg in zip((lk, dk, nk), logs, strict=True) if c]
                if any(t == -math.inf for t in terms):
                    continue
                coef = math.lgamma(v + 1) - math.lgamma(lk + 1) - math.lgamma(dk + 1) - math.lgamma(nk + 1)
                p = views[v] * math.exp(coef + sum(terms))
                sig = table[(v, lk, dk)]
                out[sig] = out.get(sig, 0.0) + p
    return out


class Oracle:
    """log P_real(b | answer) - log P_swap(b | answer) for the pool's sentences (module docstring).

    ``pool``: the trainer's ``BehaviorPool`` (its sentences and swap candidates); ``enc``: the encoding
    that turned counts into levels; ``viewers_mean``: the mean of 1 + Poisson(m - 1) viewers per answer."""

    def __init__(self, pool, enc, viewers_mean: float) -> None:
        self.pool = pool
        self.enc = enc
        self.keys = [k for k, _ in next(iter(pool.by_text.values()))]
        self.table = level_table(enc, self.keys)
        self.views = view_pmf(viewers_mean)
        self.sig_text = {sig: t for t, sig in pool.by_text.items()}
        if len(self.sig_text) != len(pool.by_text):
            raise RuntimeError("two logged sentences share a signature: the oracle assumes one sentence each")
        self.cands = {t: pool.swap_candidates(t) for t in pool.texts}
        self._cache: dict[Probs, tuple[dict[str, float], dict[str, float]]] = {}

    def distributions(self, p_like: float, p_dislike: float) -> tuple[dict[str, float], dict[str, float]]:
        """(P_real, P_swap) over the pool's sentences for an answer judged (p_like, p_dislike)."""
        key = (p_like, p_dislike)
        if key in self._cache:
            return self._cache[key]
        raw = real_distribution(p_like, p_dislike, self.views, self.table)
        real = {t: raw.get(sig, 0.0) for sig, t in self.sig_text.items()}  # sentences the trainer can log
        z = sum(real.values())
        real = {t: p / z for t, p in real.items()}
        swap = dict.fromkeys(real, 0.0)
        for r, pr in real.items():
            c = self.cands[r]
            for t in c:
                swap[t] += pr / len(c)
        self._cache[key] = (real, swap)
        return real, swap

    @staticmethod
    def llr(real: dict[str, float], swap: dict[str, float], text: str) -> float:
        tiny = 1e-300
        return math.log(max(real[text], tiny)) - math.log(max(swap[text], tiny))

    def score(self, probs: Probs, text: str) -> float:
        """The oracle's score of sentence ``text`` for an answer judged ``probs``."""
        real, swap = self.distributions(*probs)
        return self.llr(real, swap, text)


def weighted_auroc(items: list[tuple[float, float, float]]) -> float:
    """Exact AUROC of (score, positive weight, negative weight) items, ties 1/2."""
    groups: dict[float, list[float]] = {}
    for s, wp, wn in items:
        g = groups.setdefault(round(s, 12), [0.0, 0.0])
        g[0] += wp
        g[1] += wn
    neg_below = 0.0
    num = 0.0
    for s in sorted(groups):
        wp, wn = groups[s]
        num += wp * (neg_below + 0.5 * wn)
        neg_below += wn
    tot_p = sum(g[0] for g in groups.values())
    return num / (tot_p * neg_below) if tot_p and neg_below else float("nan")


def expected_ceiling(oracle: Oracle, judgements: Sequence[Probs]) -> float:
    """The oracle's exact AUROC over these answers' real and swapped sentence distributions
    (``judgements``: (p_like, p_dislike) per answer, each answer weighted once)."""
    items = []
    for p_like, p_dislike in judgements:
        real, swap = oracle.distributions(p_like, p_dislike)
        for t in real:
            items.append((Oracle.llr(real, swap, t), real[t], swap[t]))
    return weighted_auroc(items)


# --------------------------------------------------------------------------- metrics
def auroc(pos, neg) -> float:
    """P(a positive outranks a negative), ties 1/2 (the trainer's ``pairwise_auroc``, in float64)."""
    import numpy as np

    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if not pos.size or not neg.size:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def pair_acc(pos, neg) -> float:
    """Share of pairs whose positive outranks its own negative, ties 1/2."""
    return sum((p > n) + 0.5 * (p == n) for p, n in zip(pos, neg, strict=True)) / len(pos)


def share_of_ceiling(d_auroc: float, ceiling: float) -> float | None:
    """(AUROC_D - 0.5) / (AUROC_ceiling - 0.5); None when the ceiling is not above chance."""
    if not (math.isfinite(d_auroc) and math.isfinite(ceiling)) or ceiling <= 0.5:
        return None
    return (d_auroc - 0.5) / (ceiling - 0.5)


def ceiling_on_pairs(
    oracle: Oracle,
    real: Sequence[str],
    swap: Sequence[str],
    z_real: Sequence[float],
    z_swap: Sequence[float],
    judgements: Sequence[Probs],
    counts: Sequence[dict] | None = None,
) -> dict:
    """D against the ceiling on the same held-out pairs: pair i is answer i under its logged sentence
    ``real[i]`` and its swapped one ``swap[i]``, D's scores ``z_real[i]``, ``z_swap[i]``, the answer judged
    ``judgements[i]`` = (p_like, p_dislike). With ``counts`` (each record's raw counts), also the share of
    pairs whose logged sentence the oracle's encoding reproduces from them (``encoding_agreement``)."""
    o_real = [oracle.score(j, t) for j, t in zip(judgements, real, strict=True)]
    o_swap = [oracle.score(j, t) for j, t in zip(judgements, swap, strict=True)]
    d_auc, ceiling = auroc(z_real, z_swap), auroc(o_real, o_swap)
    out = {
        "pairs": len(real),
        "d_auroc": d_auc,
        "d_pairwise_acc": pair_acc(z_real, z_swap) if real else float("nan"),
        "ceiling_auroc": ceiling,
        "ceiling_pairwise_acc": pair_acc(o_real, o_swap) if real else float("nan"),
        "expected_ceiling": expected_ceiling(oracle, judgements),
        "share_of_ceiling": share_of_ceiling(d_auc, ceiling),
    }
    if counts is not None:
        sig = oracle.pool.by_text
        agree = [signature(oracle.enc, oracle.keys, c) == sig[t] for c, t in zip(counts, real, strict=True) if c]
        out["encoding_agreement"] = sum(agree) / len(agree) if agree else None
    return out
