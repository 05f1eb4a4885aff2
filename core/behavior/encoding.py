"""Behavior encoding: raw indicator counts -> discrete levels -> one natural-language sentence.

Pure module (standard library only, no I/O): the aggregator, the serving API and the
trainer all import it, so it must load in milliseconds and give the same answer everywhere.

Two encodings share one interface (``encode``, ``render``, ``keys``, ``levels``):

``PaperEncoding`` -- the paper's (RLHB, section 3, "Behavior Indicators"): each indicator
    count x is smoothed as log(1+x) and cut into N equal-width buckets (default N=5) between
    0 and log(1+cap), cap configurable per indicator; counts at or above the cap fall in the
    top bucket. Rendered e.g. "Users viewed this answer very often, clicked it rarely, liked
    it sometimes and disliked it very rarely."

``RatesEncoding`` -- the default for deployments. Raw counts mostly measure how often an
    answer was *shown*: with realistic exposure the paper's most-preferred pattern (all top
    buckets) never occurred in 400 logged records (docs/architecture.md, first experiment). So:
    exposure-normalized rates (like rate and dislike rate per view; click-through rate
    optional), each cut into L levels (default 3: low/medium/high) at edges fitted as
    quantiles of recent records (``fit_rate_edges``). The most-preferred pattern then
    occurs in the logs by construction (about 1/L^k of records for k independent rates).
    Rendered e.g. "Users liked this answer at a high rate and disliked it at a low rate."

Departures from the paper:
- the shaped reward (likes - dislikes) / (views + clicks) is clipped to [-1, 1]: producers
  may send likes without views, and an unbounded reward would dominate PPO updates;
- the rates encoding and fitted edges are additions (the paper uses fixed equal buckets);
- minimum-exposure rule (rates only): a rate from 0 views is undefined (0/0), so a record
  with no views gets level 0 (the lowest) for every rate -- it carries no evidence either way.

Extending the indicators (dwell, share, requery...): add a row to ``INDICATORS`` (paper
encoding) or ``RATES`` (rates encoding) and name it in the encoding's tuple; nothing else in
the pipeline changes (the aggregator counts any ``FeedbackKind`` it receives).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


# --------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Indicator:
    """One behavior indicator counted by the aggregator (a ``FeedbackKind`` value)."""

    name: str
    positive: bool
    """True: more is preferred (views, clicks, likes). False: less is preferred (dislikes)."""
    cap: float
    """Count at which the paper encoding reaches its top bucket (log(1+cap) is the upper edge)."""
    verb: str
    """Past-tense verb phrase used by the renderer: "Users {verb} this answer {adverb}"."""
    preference: bool = False
    """True for indicators that express approval/disapproval (likes, dislikes): a
    behavior-swapped triplet must differ in one of these (differences in exposure alone are
    indistinguishable from the text, see docs/architecture.md)."""


INDICATORS: dict[str, Indicator] = {
    i.name: i
    for i in (
        Indicator("view", positive=True, cap=100.0, verb="viewed"),
        Indicator("click", positive=True, cap=50.0, verb="clicked"),
        Indicator("like", positive=True, cap=20.0, verb="liked", preference=True),
        Indicator("dislike", positive=False, cap=20.0, verb="disliked", preference=True),
        Indicator("dwell", positive=True, cap=600.0, verb="lingered on"),
        Indicator("share", positive=True, cap=10.0, verb="shared"),
        Indicator("requery", positive=False, cap=10.0, verb="re-asked after reading"),
    )
}


@dataclass(frozen=True)
class Rate:
    """An exposure-normalized indicator: count of ``numerator`` per view."""

    name: str
    numerator: str
    positive: bool
    verb: str
    prior_edges: tuple[float, ...]
    """Edges for 3 levels used until enough records exist to fit them (cold start)."""
    preference: bool = False


RATES: dict[str, Rate] = {
    r.name: r
    for r in (
        Rate("like_rate", "like", positive=True, verb="liked", prior_edges=(0.05, 0.2), preference=True),
        Rate("dislike_rate", "dislike", positive=False, verb="disliked", prior_edges=(0.02, 0.1), preference=True),
        Rate("ctr", "click", positive=True, verb="clicked", prior_edges=(0.1, 0.3)),
        Rate("share_rate", "share", positive=True, verb="shared", prior_edges=(0.01, 0.05)),
        Rate("requery_rate", "requery", positive=False, verb="re-asked after", prior_edges=(0.02, 0.1)),
    )
}

PAPER_INDICATORS = ("view", "click", "like", "dislike")
DEFAULT_RATES = ("like_rate", "dislike_rate")

_ADVERBS = {
    2: ("rarely", "often"),
    3: ("rarely", "sometimes", "often"),
    4: ("very rarely", "rarely", "often", "very often"),
    5: ("very rarely", "rarely", "sometimes", "often", "very often"),
}
_LEVEL_WORDS = {
    2: ("low", "high"),
    3: ("low", "medium", "high"),
    4: ("very low", "low", "high", "very high"),
    5: ("very low", "low", "medium", "high", "very high"),
}


def _word(table: dict[int, tuple[str, ...]], level: int, n: int, fallback: str) -> str:
    if not 0 <= level < n:
        raise ValueError(f"level {level} is outside 0..{n - 1}")
    words = table.get(n)
    return words[level] if words else fallback.format(k=level + 1, n=n)


def _join_clauses(clauses: list[str]) -> str:
    """ "Users a, b and c." -- the first clause names "this answer", the rest say "it"."""
    if len(clauses) == 1:
        return f"Users {clauses[0]}."
    return f"Users {', '.join(clauses[:-1])} and {clauses[-1]}."


# --------------------------------------------------------------------------- paper math
def smooth(x: float) -> float:
    """log(1+x), the paper's smoothing; negative counts are treated as 0."""
    return math.log1p(max(0.0, float(x)))


def bucket(x: float, cap: float, n: int) -> int:
    """Equal-width bucket of log(1+x) over [0, log(1+cap)]: 0..n-1, x >= cap -> n-1."""
    if cap <= 0 or n < 1:
        raise ValueError(f"cap must be > 0 and n >= 1 (got cap={cap}, n={n})")
    return min(n - 1, int(smooth(x) / math.log1p(cap) * n))


def shaped_reward(counts: Mapping[str, float]) -> float:
    """(likes - dislikes) / (views + clicks), 0 when the denominator is 0; clipped to [-1, 1].

    Raises ValueError on a NaN or infinite count: clipping would turn NaN into the maximum
    reward (min(1, nan) is 1), so a corrupt counter would be trained on as the best answer."""
    bad = {k: v for k, v in counts.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"counts must be finite numbers; got {bad}")
    denominator = counts.get("view", 0.0) + counts.get("click", 0.0)
    if denominator <= 0:
        return 0.0
    value = (counts.get("like", 0.0) - counts.get("dislike", 0.0)) / denominator
    if not math.isfinite(value):  # finite inputs can still overflow (1e308 - -1e308)
        raise ValueError(f"counts {dict(counts)} give no defined reward")
    return max(-1.0, min(1.0, value))


# --------------------------------------------------------------------------- interface
class Encoding(Protocol):
    name: str

    def keys(self) -> tuple[str, ...]: ...
    def levels(self, key: str) -> int: ...
    def positive(self, key: str) -> bool: ...
    def preference(self, key: str) -> bool: ...
    def encode(self, counts: Mapping[str, float]) -> dict[str, int]: ...
    def render(self, buckets: Mapping[str, int]) -> str: ...


@dataclass(frozen=True)
class PaperEncoding:
    """The paper's encoding: log(1+x) of each count in N equal-width buckets up to a cap."""

    indicators: tuple[str, ...] = PAPER_INDICATORS
    num_buckets: int = 5
    caps: Mapping[str, float] = field(default_factory=dict)
    """Per-indicator cap overrides; missing ones use ``INDICATORS[name].cap``."""
    name: str = "paper"

    def __post_init__(self) -> None:
        unknown = [i for i in self.indicators if i not in INDICATORS]
        if unknown:
            raise ValueError(f"unknown indicators {unknown}; add them to INDICATORS ({sorted(INDICATORS)})")
        if not self.indicators:
            raise ValueError("the paper encoding needs at least one indicator")
        if self.num_buckets < 2:
            raise ValueError(f"num_buckets must be >= 2 (got {self.num_buckets})")
        bad = {k: v for k, v in self.caps.items() if not (isinstance(v, int | float) and v > 0)}
        if bad:
            raise ValueError(f"caps must be positive numbers, got {bad}")

    def cap(self, key: str) -> float:
        return float(self.caps.get(key, INDICATORS[key].cap))

    def keys(self) -> tuple[str, ...]:
        return self.indicators

    def levels(self, key: str) -> int:
        return self.num_buckets

    def positive(self, key: str) -> bool:
        return INDICATORS[key].positive

    def preference(self, key: str) -> bool:
        return INDICATORS[key].preference

    def encode(self, counts: Mapping[str, float]) -> dict[str, int]:
        return {k: bucket(counts.get(k, 0.0), self.cap(k), self.num_buckets) for k in self.indicators}

    def render(self, buckets: Mapping[str, int]) -> str:
        clauses = []
        for i, key in enumerate(self.indicators):
            adverb = _word(_ADVERBS, buckets[key], self.num_buckets, "at level {k} of {n}")
            clauses.append(f"{INDICATORS[key].verb} {'this answer' if i == 0 else 'it'} {adverb}")
        return _join_clauses(clauses)


@dataclass(frozen=True)
class RateEdges:
    """Level edges per rate: a rate r gets level = #(edges < r), so L levels need L-1 edges.

    A plain value: serialized to JSON and stored in Redis so that the API, the aggregator
    and the trainer encode with the same edges."""

    edges: Mapping[str, tuple[float, ...]]
    fitted_on: int = 0
    """How many records the edges were fitted on (0: the cold-start priors)."""

    def to_json(self) -> str:
        return json.dumps(
            {"edges": {k: list(v) for k, v in self.edges.items()}, "fitted_on": self.fitted_on}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RateEdges:
        data = json.loads(text)
        return cls(
            edges={k: tuple(float(x) for x in v) for k, v in data["edges"].items()},
            fitted_on=int(data.get("fitted_on", 0)),
        )


def prior_edges(rates: Sequence[str] = DEFAULT_RATES, levels: int = 3) -> RateEdges:
    """Cold-start edges: the table's 3-level priors, spread evenly between them for other L."""
    out = {}
    for name in rates:
        lo, hi = RATES[name].prior_edges[0], RATES[name].prior_edges[-1]
        out[name] = (lo,) if levels == 2 else tuple(lo + (hi - lo) * i / (levels - 2) for i in range(levels - 1))
    return RateEdges(edges=out, fitted_on=0)


def rates_of(counts: Mapping[str, float], rates: Sequence[str] = DEFAULT_RATES) -> dict[str, float] | None:
    """Per-view rates, or None when there are no views (the rate is undefined)."""
    views = counts.get("view", 0.0)
    if views <= 0:
        return None
    return {name: max(0.0, counts.get(RATES[name].numerator, 0.0)) / views for name in rates}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def fit_rate_edges(
    records: Iterable[Mapping[str, float]],
    rates: Sequence[str] = DEFAULT_RATES,
    levels: int = 3,
    min_records: int = 20,
) -> RateEdges:
    """Edges at the k/L quantiles (k = 1..L-1) of each rate over ``records`` (raw counts).

    Records without views carry no rate and are left out. With fewer than ``min_records``
    usable records the priors are returned (quantiles of a handful of records are noise).
    Ties (e.g. most records have no dislike) give repeated edges: a value equal to an edge
    takes the lower level, so "0 dislikes" stays at level 0 (low)."""
    values: dict[str, list[float]] = {name: [] for name in rates}
    n = 0
    for counts in records:
        r = rates_of(counts, rates)
        if r is None:
            continue
        n += 1
        for name in rates:
            values[name].append(r[name])
    if n < max(1, min_records):
        return prior_edges(rates, levels)
    edges = {}
    for name in rates:
        vs = sorted(values[name])
        edges[name] = tuple(quantile(vs, k / levels) for k in range(1, levels))
    return RateEdges(edges=edges, fitted_on=n)


@dataclass(frozen=True)
class RatesEncoding:
    """Per-view rates in L levels at fitted edges (default: like rate, dislike rate; L=3)."""

    rates: tuple[str, ...] = DEFAULT_RATES
    num_levels: int = 3
    edges: RateEdges | None = None
    """None: the cold-start priors (``prior_edges``)."""
    name: str = "rates"

    def __post_init__(self) -> None:
        unknown = [r for r in self.rates if r not in RATES]
        if unknown:
            raise ValueError(f"unknown rates {unknown}; add them to RATES ({sorted(RATES)})")
        if not self.rates:
            raise ValueError("the rates encoding needs at least one rate")
        if self.num_levels < 2:
            raise ValueError(f"levels must be >= 2 (got {self.num_levels})")
        if self.edges is None:
            object.__setattr__(self, "edges", prior_edges(self.rates, self.num_levels))
        for r in self.rates:
            e = self.edges.edges.get(r)
            if e is None or len(e) != self.num_levels - 1 or list(e) != sorted(e):
                raise ValueError(
                    f"edges for {r!r} must be {self.num_levels - 1} ascending numbers for {self.num_levels} "
                    f"levels (got {e}); refit them with fit_rate_edges(levels={self.num_levels})"
                )

    def keys(self) -> tuple[str, ...]:
        return self.rates

    def levels(self, key: str) -> int:
        return self.num_levels

    def positive(self, key: str) -> bool:
        return RATES[key].positive

    def preference(self, key: str) -> bool:
        return RATES[key].preference

    def encode(self, counts: Mapping[str, float]) -> dict[str, int]:
        r = rates_of(counts, self.rates)
        if r is None:  # minimum-exposure rule: no views -> lowest level for every rate
            return dict.fromkeys(self.rates, 0)
        return {name: sum(1 for e in self.edges.edges[name] if e < r[name]) for name in self.rates}

    def render(self, buckets: Mapping[str, int]) -> str:
        clauses = []
        for i, key in enumerate(self.rates):
            word = _word(_LEVEL_WORDS, buckets[key], self.num_levels, "level {k} of {n}")
            clauses.append(f"{RATES[key].verb} {'this answer' if i == 0 else 'it'} at a {word} rate")
        return _join_clauses(clauses)

    def with_edges(self, edges: RateEdges) -> RatesEncoding:
        return RatesEncoding(rates=self.rates, num_levels=self.num_levels, edges=edges)


DEFAULT_ENCODING: Encoding = RatesEncoding()


# --------------------------------------------------------------------------- patterns
def most_preferred(encoding: Encoding | None = None) -> dict[str, int]:
    """Top level for positive indicators, bottom level for negative ones (dislikes)."""
    enc = encoding or DEFAULT_ENCODING
    return {k: enc.levels(k) - 1 if enc.positive(k) else 0 for k in enc.keys()}


def least_preferred(encoding: Encoding | None = None) -> dict[str, int]:
    return opposite(most_preferred(encoding), encoding)


def most_preferred_sentence(encoding: Encoding | None = None) -> str:
    """The behavior sentence served by default: what users say about the best answers.

    The one definition: the API serves it and the trainer trains toward it, both from the
    encoding the aggregator stored (``core.behavior.encoding_store.load_encoding``), so the
    same fitted encoding gives the same sentence everywhere."""
    enc = encoding or DEFAULT_ENCODING
    return enc.render(most_preferred(enc))


def least_preferred_sentence(encoding: Encoding | None = None) -> str:
    """What users say about the worst answers (the mirror of ``most_preferred_sentence``)."""
    enc = encoding or DEFAULT_ENCODING
    return enc.render(least_preferred(enc))


def is_positive(key: str) -> bool:
    """Polarity of a bucket key of either encoding (``Indicator.positive`` / ``Rate.positive``):
    True when more is preferred (likes, like rate, clicks), False when less is (dislikes,
    dislike rate, re-queries)."""
    if key in INDICATORS:
        return INDICATORS[key].positive
    if key in RATES:
        return RATES[key].positive
    raise KeyError(f"unknown behavior key {key!r}; known: {sorted(INDICATORS) + sorted(RATES)}")


def infer_encoding(records: Iterable) -> Encoding:
    """The encoding behind a set of behavior records when no stored encoding is at hand (an
    exported records file trained offline). Records name their encoding and carry their
    bucket keys but not the level count, so the count is the configured default (5 buckets,
    3 levels) unless a record shows a higher level; the key order (which orders the
    sentence's clauses) is the records' own, as the aggregator wrote them. In the running loop the trainer loads
    the stored encoding instead, so this guess is only for offline files."""
    name, top = "", {}  # top: key -> highest level seen, in first-seen order
    for r in records:
        name = name or getattr(r, "encoding", "")
        for k, level in r.buckets.items():
            top[k] = max(top.get(k, 0), int(level))
    paper = [k for k in top if k in INDICATORS]
    rates = [k for k in top if k in RATES]
    if not paper and not rates:
        return DEFAULT_ENCODING
    if name == "paper" or len(paper) > len(rates):
        return PaperEncoding(indicators=tuple(paper), num_buckets=max(5, *(top[k] + 1 for k in paper)))
    return RatesEncoding(rates=tuple(rates), num_levels=max(3, *(top[k] + 1 for k in rates)))


def all_patterns(encoding: Encoding | None = None) -> list[dict[str, int]]:
    """Every bucket combination of the encoding, in lexicographic order."""
    enc = encoding or DEFAULT_ENCODING
    keys = enc.keys()
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(range(enc.levels(k)) for k in keys))]


def opposite(buckets: Mapping[str, int], encoding: Encoding | None = None) -> dict[str, int]:
    """Each level mirrored (b -> L-1-b): high likes become low likes and so on."""
    enc = encoding or DEFAULT_ENCODING
    return {k: enc.levels(k) - 1 - buckets[k] for k in enc.keys()}


def swap_candidates(buckets: Mapping[str, int], encoding: Encoding | None = None) -> list[dict[str, int]]:
    """Patterns a behavior-swapped (fake) triplet may use: they differ from ``buckets`` in at
    least one preference indicator (like/dislike). Swaps that differ only in exposure
    (views, clicks) cannot be told apart from the text even in principle. Encodings without
    preference indicators fall back to any different pattern."""
    enc = encoding or DEFAULT_ENCODING
    pref = [k for k in enc.keys() if enc.preference(k)]
    if not pref:
        return [p for p in all_patterns(enc) if any(p[k] != buckets[k] for k in enc.keys())]
    return [p for p in all_patterns(enc) if any(p[k] != buckets[k] for k in pref)]


# --------------------------------------------------------------------------- (de)serialization
def encoding_to_json(encoding: Encoding) -> str:
    """The whole encoding (name, parameters, edges) as JSON, to share through Redis."""
    if isinstance(encoding, PaperEncoding):
        spec = {
            "name": "paper",
            "indicators": list(encoding.indicators),
            "num_buckets": encoding.num_buckets,
            "caps": dict(encoding.caps),
        }
    elif isinstance(encoding, RatesEncoding):
        spec = {
            "name": "rates",
            "rates": list(encoding.rates),
            "levels": encoding.num_levels,
            "edges": json.loads(encoding.edges.to_json()),
        }
    else:
        raise TypeError(f"cannot serialize encoding {type(encoding).__name__}")
    return json.dumps(spec, sort_keys=True)


def encoding_from_json(text: str | bytes) -> Encoding:
    spec = json.loads(text)
    if spec.get("name") == "paper":
        return PaperEncoding(
            indicators=tuple(spec["indicators"]),
            num_buckets=int(spec["num_buckets"]),
            caps={k: float(v) for k, v in spec.get("caps", {}).items()},
        )
    if spec.get("name") == "rates":
        return RatesEncoding(
            rates=tuple(spec["rates"]),
            num_levels=int(spec["levels"]),
            edges=RateEdges.from_json(json.dumps(spec["edges"])),
        )
    raise ValueError(f"unknown encoding {spec.get('name')!r}; expected 'paper' or 'rates'")


def make_encoding(
    name: str = "rates",
    num_buckets: int = 5,
    levels: int = 3,
    rates: Sequence[str] = DEFAULT_RATES,
    caps: Mapping[str, float] | None = None,
    edges: RateEdges | None = None,
) -> Encoding:
    """Build an encoding from settings values (``AggregatorSettings``)."""
    if name == "paper":
        return PaperEncoding(num_buckets=num_buckets, caps=dict(caps or {}))
    if name == "rates":
        return RatesEncoding(rates=tuple(rates), num_levels=levels, edges=edges)
    raise ValueError(f"unknown encoding {name!r}; expected 'paper' or 'rates'")
