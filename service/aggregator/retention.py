"""How long the aggregator keeps per-impression state, and how old an event may be.

Dedupe is exact only while an event's ``seen:`` entry exists, so the keys must outlive every
event that can still be accepted: an event older than ``MAX_EVENT_AGE_S`` (by its ``ts``)
is dead-lettered, and every key an event touches (``imp:``, ``cnt:``, ``seen:``) is given a
TTL of ``MAX_EVENT_AGE_S + KEY_TTL_MARGIN_S`` again at each write. A retry of an accepted
event therefore always finds its id: it arrives at most MAX_EVENT_AGE_S after ``ts`` (later
ones are refused), plus the future clock skew the schema allows, which the margin covers
along with consumer lag. Impressions nobody reacts to disappear after the TTL instead of
growing Redis forever; their last record is on ``behavior-records``.

The defaults here are those of RLHB_AGG_MAX_EVENT_AGE_S and RLHB_AGG_KEY_TTL_S
(``AggregatorSettings``), which ``rlhb aggregator`` passes to ``Aggregator``.
"""

from __future__ import annotations

MAX_EVENT_AGE_S = 7 * 86_400.0
"""Events whose ``ts`` is older than this (7 days) are dead letters, not counts."""
KEY_TTL_MARGIN_S = 86_400.0
"""How much longer than the event age the keys live (clock skew, consumer lag, restarts)."""


def key_ttl_s(max_event_age_s: float = MAX_EVENT_AGE_S) -> float:
    return max_event_age_s + KEY_TTL_MARGIN_S
