"""One user reaction to one served answer.

Wire format on the ``feedback`` topic (any Kafka client may produce it): a UTF-8 JSON
object, key = impression id bytes, for example::

    {"schema_version": 1, "event_id": "e-123", "impression_id": "<id from /v1/query>",
     "kind": "like", "value": 1.0, "ts": 1732400000.0}

``event_id`` is the producer's idempotency key: the aggregator counts each event id at
most once, so producers may retry freely.

Bounds (checked here, so the API answers 422 and the aggregator dead-letters violators that
were written straight to Kafka):

- count kinds (view, click, like, dislike, share, requery): ``value`` is exactly 1 (or absent).
  One event is one occurrence; a producer that could send ``like: 1e308`` could overflow the
  counters and own the reward.
- ``dwell``: seconds, 0 <= value <= ``MAX_DWELL_S`` (1 hour). Longer "reading" is a tab left
  open, not attention; a client that measures more sends several events or clips.
- ``ts``: not before ``MIN_TS`` (2020-01-01 UTC) and at most ``MAX_CLOCK_SKEW_S`` (5 minutes)
  ahead of this machine's clock (client clocks drift a little; events from the future do not
  exist). How *old* an event may be is the aggregator's rule (it needs "now" and its dedupe
  window), not the contract's.
- ``schema_version``: one of ``KNOWN_SCHEMA_VERSIONS``.
"""

from __future__ import annotations

import math
import time
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})

MAX_DWELL_S = 3600.0
"""Largest dwell event, in seconds (1 hour)."""
MIN_TS = 1_577_836_800.0
"""2020-01-01T00:00:00Z: no event of this service is older."""
MAX_CLOCK_SKEW_S = 300.0
"""How far ahead of this machine's clock an event's ``ts`` may be."""


class FeedbackKind(str, Enum):
    """Behavior indicators. The paper uses the first four; the rest are the extensions
    a deployment typically adds (dwell seconds, shares, re-queries)."""

    view = "view"
    click = "click"
    like = "like"
    dislike = "dislike"
    dwell = "dwell"
    share = "share"
    requery = "requery"


MEASURE_KINDS = frozenset({FeedbackKind.dwell})
"""Kinds whose value is an amount (seconds); every other kind is a count (value exactly 1)."""
MAX_VALUE = {kind: (MAX_DWELL_S if kind in MEASURE_KINDS else 1.0) for kind in FeedbackKind}
"""Largest value of one event, per kind (the aggregator's Lua script re-checks it)."""


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=SCHEMA_VERSION, description="Wire format version (known: 1).")
    event_id: str = Field(min_length=1, max_length=128, description="Idempotency key, unique per event.")
    impression_id: str = Field(min_length=1, max_length=256, description="The id returned by /v1/query.")
    kind: FeedbackKind
    value: float = Field(
        default=1.0, description=f"1 for counts (the only value allowed); seconds for dwell (0..{MAX_DWELL_S:g})."
    )
    ts: float = Field(
        default_factory=time.time,
        description=f"Unix seconds when the user acted: from 2020 to at most {MAX_CLOCK_SKEW_S:g} s ahead of now.",
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in KNOWN_SCHEMA_VERSIONS:
            raise ValueError(f"schema_version {v} is unknown; this service reads {sorted(KNOWN_SCHEMA_VERSIONS)}")
        return v

    @field_validator("value")
    @classmethod
    def _bounded_per_kind(cls, v: float, info: ValidationInfo) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be a finite number")
        if v < 0:
            raise ValueError("value must be >= 0 (events add to counters; they never subtract)")
        kind = info.data.get("kind")  # absent when the kind itself was invalid (reported on its own)
        if kind is None:
            return v
        if kind in MEASURE_KINDS:
            if v > MAX_DWELL_S:
                raise ValueError(
                    f"value {v:g} is over {MAX_DWELL_S:g}: a {kind.value} event carries at most "
                    f"{MAX_DWELL_S:g} seconds (send several events for longer)"
                )
        elif v != 1.0:
            raise ValueError(
                f"value must be 1 for a {kind.value} event (one event counts one {kind.value}; "
                "send one event per occurrence)"
            )
        return v

    @field_validator("ts")
    @classmethod
    def _plausible_ts(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("ts must be a finite, non-negative unix time in seconds")
        if v < MIN_TS:
            raise ValueError(f"ts {v:g} is before 2020 (unix seconds expected, e.g. {time.time():.0f})")
        if v > time.time() + MAX_CLOCK_SKEW_S:
            raise ValueError(
                f"ts {v:g} is more than {MAX_CLOCK_SKEW_S:g} s in the future (unix seconds, not milliseconds?)"
            )
        return v
