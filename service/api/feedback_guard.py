"""Who may send which feedback, how much and how often (issue 16, item 2): the rules
/v1/feedback applies to ordinary clients between parsing a body and writing it to Kafka.

- Identity: every impression id is bound to the client key of whoever asked (``X-Client-Id``
  sent with the question, or issued by the API in that header of the answer); feedback must
  carry the same ``X-Client-Id`` (core.impression_ids checks it with the signature and expiry).
- Once per (impression, client): a count event (view, click, like, dislike, share, requery) is
  recorded at most once per impression and kind. The server derives its event id from the
  impression id and the kind (``once_event_id``), so the aggregator -- which counts each event
  id once -- counts it once even if this check is skipped, and a client sending "10 batches of
  1,000 likes" for one answer gets one like. The API also claims that event id in Redis (SET NX,
  "pending" until the broker acknowledged the write, then "written" until the id expires), so
  duplicates are answered as such and never reach the topic; a request killed between the claim
  and the write leaves a pending claim that its retry writes through (``PENDING_S``). A client's
  own event id is kept for dwell (a measure that may come in pieces): its retries stay idempotent.
  Redis down: the claim is skipped (logged) and the derived event ids still dedupe downstream.
- Rate: a token bucket per client key, in this process (one token per event; ``feedback_burst``
  tokens, refilled at ``feedback_rate_per_s``); over it, 429 with Retry-After. Per instance: N API
  instances allow N times the rate. Bounded memory: the least recently seen clients are forgotten
  (they come back with a full bucket).

Trusted relays -- requests with the admin token (in dev mode without one: everyone) -- are exempt
from the binding, the once-rule and the rate limit and keep their event ids: a relay reports
several end users' reactions to one answer (the simulated users' viewers do), as producers that
write straight to Kafka do. The aggregator still checks every id's signature, key and expiry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict

from schemas.feedback import MEASURE_KINDS, FeedbackEvent

log = logging.getLogger(__name__)

MAX_CLIENTS = 100_000
"""Token buckets kept in memory at most."""


def once_event_id(impression_id: str, kind: str) -> str:
    """The server's event id of a count event: the same for every event of ``kind`` on this
    impression (ids are bound to one client, so this is once per (impression, client))."""
    digest = hashlib.sha256(f"{impression_id}\x00{kind}".encode()).hexdigest()[:32]
    return f"once-{kind}-{digest}"


def server_event(event: FeedbackEvent) -> FeedbackEvent:
    """``event`` with the server's event id when its kind counts once; dwell keeps the client's."""
    if event.kind in MEASURE_KINDS:
        return event
    return event.model_copy(update={"event_id": once_event_id(event.impression_id, event.kind.value)})


class TokenBuckets:
    """One token bucket per client key (see the module docstring)."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = MAX_CLIENTS):
        self.rate, self.burst, self.max_clients = float(rate_per_s), float(burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, tokens: int, now: float | None = None) -> float:
        """Take ``tokens``; 0.0 when granted, else the seconds to wait before they would be."""
        now = time.monotonic() if now is None else now
        level, at = self._buckets.pop(client, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if tokens > self.burst:  # never grantable: say when a full bucket would be back
            self._buckets[client] = (level, now)
            return max(1.0, (self.burst - level) / self.rate)
        wait = 0.0 if level >= tokens else (tokens - level) / self.rate
        self._buckets[client] = (level - tokens if wait == 0.0 else level, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


PENDING_S = 60
"""How long a claim stays "pending" (the broker has not acknowledged the write yet). A claim that
never becomes "written" (the API was killed mid-request) expires after this, and meanwhile a retry
is written again rather than answered "duplicate": the derived event ids dedupe in the aggregator,
so nothing accepted is lost and nothing is counted twice."""


def claim_once(redis, prefix: str, events: list[tuple[FeedbackEvent, float]]) -> list[bool | None] | None:
    """Claim each event id (distinct ids; SET NX "pending"): True where this request is the first,
    False where the id is already *written* (a duplicate), None where another request's claim is
    still pending (it may have died before the broker took the event: write it again). None as a
    whole when Redis does not answer (the caller writes them all: the derived event ids still
    dedupe in the aggregator)."""
    if not events:
        return []
    try:
        pipe = redis.pipeline(transaction=False)
        for ev, _ in events:
            key = f"{prefix}feedback:once:{ev.event_id}"
            pipe.set(key, "pending", nx=True, ex=PENDING_S)
            pipe.get(key)
        replies = pipe.execute()
    except Exception as e:  # noqa: BLE001 - any Redis failure: fail open, say so in the log
        log.warning("feedback once-per-client check skipped: Redis unavailable (%s)", type(e).__name__)
        return None
    out: list[bool | None] = []
    for new, value in zip(replies[0::2], replies[1::2], strict=True):
        out.append(True if new else (None if value in ("pending", b"pending") else False))
    return out


def first_only(
    redis, prefix: str, events: list[FeedbackEvent], lifetimes: list[float]
) -> tuple[list[FeedbackEvent], list[tuple[FeedbackEvent, float]]]:
    """(events to write, count events claimed by this request with their lifetimes): count events
    already written (or repeated within the batch) are left out. The claims are "pending" until
    ``confirm_once`` marks them written after the broker's acknowledgement, so a request that dies
    in between never turns its retry into a "duplicate" (``PENDING_S``). Redis down: every event is
    written (their derived event ids still dedupe in the aggregator) and nothing is claimed."""
    once: list[tuple[FeedbackEvent, float]] = []
    repeated: set[int] = set()
    seen: set[str] = set()
    for ev, ttl in zip(events, lifetimes, strict=True):
        if ev.kind in MEASURE_KINDS:
            continue
        if ev.event_id in seen:
            repeated.add(id(ev))  # the same count event twice in one batch
        else:
            seen.add(ev.event_id)
            once.append((ev, ttl))
    first = claim_once(redis, prefix, once)
    if first is None:
        return list(events), []
    skip = repeated | {id(ev) for (ev, _), new in zip(once, first, strict=True) if new is False}
    to_write = [ev for ev in events if id(ev) not in skip]
    return to_write, [(ev, ttl) for (ev, ttl), new in zip(once, first, strict=True) if new is not False]


def confirm_once(redis, prefix: str, claimed: list[tuple[FeedbackEvent, float]]) -> None:
    """The broker took ``claimed``: mark them written, for as long as their ids live."""
    if not claimed:
        return
    try:
        pipe = redis.pipeline(transaction=False)
        for ev, ttl_s in claimed:
            pipe.set(f"{prefix}feedback:once:{ev.event_id}", "1", ex=max(1, int(ttl_s)))
        pipe.execute()
    except Exception as e:  # noqa: BLE001 - the pending claims expire; the aggregator still dedupes
        log.warning(
            "feedback claims not confirmed (%s): a retry within %ds is written again", type(e).__name__, PENDING_S
        )


def release_once(redis, prefix: str, claimed: list[tuple[FeedbackEvent, float]]) -> None:
    """Undo ``claim_once`` for events that were not written (the broker refused): the client's
    retry must not be answered "duplicate"."""
    if not claimed:
        return
    try:
        redis.delete(*(f"{prefix}feedback:once:{ev.event_id}" for ev, _ in claimed))
    except Exception as e:  # noqa: BLE001 - the claim expires with the id anyway
        log.warning("feedback claims not released (%s): a retry may be answered as duplicates", type(e).__name__)
