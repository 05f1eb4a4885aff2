"""The aggregator's pure core: Kafka messages -> events and impressions -> counts -> BehaviorRecord.

No I/O. The committing shell (service.aggregator.consumer) feeds each poll batch through
``plan_batch`` and applies the plan to Redis atomically (service.aggregator.redis_state);
``Fold`` is the same semantics in memory -- the specification the Redis scripts implement,
used by tests as ground truth and by anyone who wants counts from a log dump.

Semantics:
- an event counts once per (impression id, event id): producers may retry freely;
- an event is counted only once its impression is known; until then it waits (pending);
- counts are sums of event values per kind (1 per view/click/like/dislike, seconds of dwell);
- a message that cannot be decoded, or breaks the contract (schemas.feedback bounds: events may
  be written straight to Kafka, past the API's checks), is a dead letter with a reason, never
  an exception;
- an event older than the allowed age (``max_age_s``, by its ``ts``) is a dead letter: its
  dedupe window may have passed (service.aggregator.retention).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from core.behavior.encoding import Encoding, shaped_reward
from core.errors import validation_message
from schemas import BehaviorRecord, FeedbackEvent, Impression


@dataclass(frozen=True)
class RawMessage:
    """What the shell hands the core: one Kafka record, already split by topic role."""

    role: str
    """'impression' or 'event'."""
    value: bytes | None
    key: bytes | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    message: RawMessage

    def envelope(self) -> bytes:
        """Dead-letter wire format: JSON with the reason, the source position and the original
        bytes (base64), so nothing is lost and the message can be repaired and re-sent."""
        m = self.message
        return json.dumps(
            {
                "reason": self.reason,
                "source_topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "key_b64": base64.b64encode(m.key).decode() if m.key is not None else None,
                "value_b64": base64.b64encode(m.value).decode() if m.value is not None else None,
                "dead_at": time.time(),
            }
        ).encode()


@dataclass
class Plan:
    impressions: list[Impression] = field(default_factory=list)
    events: list[tuple[FeedbackEvent, RawMessage]] = field(default_factory=list)
    """Valid events with the message they came in (bytes and position, for dead letters)."""
    dead: list[DeadLetter] = field(default_factory=list)


def decode(msg: RawMessage) -> Impression | FeedbackEvent | DeadLetter:
    if msg.value is None:
        return DeadLetter("empty message (null value)", msg)
    model = Impression if msg.role == "impression" else FeedbackEvent
    try:
        return model.model_validate_json(msg.value)
    except ValidationError as e:
        kind = "impression" if msg.role == "impression" else "feedback event"
        return DeadLetter(f"not a valid {kind}: {validation_message(e, default='message')}", msg)


def plan_batch(
    messages: Iterable[RawMessage],
    now: float | None = None,
    max_age_s: float | None = None,
    id_problem: Callable[[str, float], str | None] | None = None,
) -> Plan:
    """Decode a poll batch; drop in-batch duplicates of (impression id, event id); with
    ``max_age_s``, dead-letter events whose ``ts`` is older than that at ``now``; with
    ``id_problem`` (id, ts) -> reason or None, dead-letter impressions and events whose id this
    service did not sign (or whose id had expired at the event's time)."""
    plan, seen = Plan(), set()
    now = time.time() if now is None else now
    for msg in messages:
        item = decode(msg)
        problem = None
        if id_problem is not None and not isinstance(item, DeadLetter):
            problem = id_problem(item.impression_id, item.created_at if isinstance(item, Impression) else item.ts)
        if isinstance(item, DeadLetter):
            plan.dead.append(item)
        elif problem:
            plan.dead.append(DeadLetter(f"impression id refused: {problem}", msg))
        elif isinstance(item, Impression):
            plan.impressions.append(item)
        elif max_age_s is not None and now - item.ts > max_age_s:
            plan.dead.append(
                DeadLetter(
                    f"event is {now - item.ts:.0f} s old, over the allowed {max_age_s:g} s "
                    "(its retries can no longer be deduped)",
                    msg,
                )
            )
        else:
            key = (item.impression_id, item.event_id)
            if key not in seen:
                seen.add(key)
                plan.events.append((item, msg))
    return plan


@dataclass
class Fold:
    """In-memory reference of the aggregation semantics (see module docstring)."""

    impressions: dict[str, Impression] = field(default_factory=dict)
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    pending: dict[str, dict[str, FeedbackEvent]] = field(default_factory=dict)

    def _count(self, ev: FeedbackEvent) -> None:
        key = (ev.impression_id, ev.event_id)
        if key in self.seen:
            return
        self.seen.add(key)
        c = self.counts.setdefault(ev.impression_id, {})
        c[ev.kind.value] = c.get(ev.kind.value, 0.0) + ev.value

    def apply(self, item: Impression | FeedbackEvent) -> None:
        if isinstance(item, Impression):
            self.impressions[item.impression_id] = item
            for ev in self.pending.pop(item.impression_id, {}).values():
                self._count(ev)
        elif item.impression_id in self.impressions:
            self._count(item)
        else:
            self.pending.setdefault(item.impression_id, {}).setdefault(item.event_id, item)

    def apply_all(self, items: Iterable[Impression | FeedbackEvent]) -> Fold:
        for item in items:
            self.apply(item)
        return self


def parse_counts(raw: Mapping[str, str | float]) -> dict[str, float]:
    """Redis hash values (strings) -> floats."""
    return {k: float(v) for k, v in raw.items()}


def build_record(
    impression: Impression, counts: Mapping[str, float], encoding: Encoding, now: float | None = None
) -> BehaviorRecord:
    """One impression and its counts as the trainer reads them: buckets, sentence, reward."""
    buckets = encoding.encode(counts)
    return BehaviorRecord(
        impression_id=impression.impression_id,
        query=impression.query,
        response=impression.response,
        behavior_prompt=impression.behavior,
        adapter_version=impression.adapter_version,
        counts=dict(counts),
        buckets=buckets,
        behavior_text=encoding.render(buckets),
        reward=shaped_reward(counts),
        encoding=encoding.name,
        arm=impression.arm,
        trial=impression.trial,
        updated_at=time.time() if now is None else now,
    )
