"""One user reaction to one served answer.

Wire format on the ``feedback`` topic (any Kafka client may produce it): a UTF-8 JSON
object, key = impression id bytes, for example::

    {"schema_version": 1, "event_id": "e-123", "impression_id": "<id from /v1/query>",
     "kind": "like", "value": 1.0, "ts": 1732400000.0}

``event_id`` is the producer's idempotency key: the aggregator counts each event id at
most once, so producers may retry freely.
"""

from __future__ import annotations

import math
import time
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


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


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=128, description="Idempotency key, unique per event.")
    impression_id: str = Field(min_length=1, max_length=256, description="The id returned by /v1/query.")
    kind: FeedbackKind
    value: float = Field(default=1.0, description="Amount to add: 1 for counts, seconds for dwell.")
    ts: float = Field(default_factory=time.time, description="Unix seconds when the user acted.")

    @field_validator("value")
    @classmethod
    def _finite_non_negative(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("value must be a finite number")
        if v < 0:
            raise ValueError("value must be >= 0 (events add to counters; they never subtract)")
        return v

    @field_validator("ts")
    @classmethod
    def _finite_ts(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("ts must be a finite, non-negative unix time in seconds")
        return v
