"""Offsets stored in Redis must belong to the log they were read from.

The aggregator keeps its consumer offsets in Redis with the counts (``P offsets``). Redis can
outlive the log: the embedded broker (tansu) keeps topics in memory, so after a restart of
`rlhb up` the topics are new and empty while Redis (append-only file) still holds offsets into
the old ones. Seeking there would silently skip the first events of the new log: tansu answers
a fetch past the end with nothing, not with an out-of-range error, and its reported end offset
is the base offset of the last batch (not the high watermark), so "stored offset > end" cannot
be told apart from a normal position within one batch.

What tells them apart is the topic id, which Kafka and tansu give every topic when it is
created: a different id is a different log. So at start (before the first poll seeks) the
member compares each topic's id with the one stored next to the offsets; on a change it forgets
that topic's stored offsets (the group then starts at its committed offset: the beginning on a
fresh broker) and logs it. Re-reading is safe: counts are deduped by event id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def topic_ids(bootstrap: str, topics: Iterable[str], options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """topic -> topic id as the broker reports it; topics without one (a broker too old to have
    ids, a missing topic) are left out. Errors are logged and give {} (the check is skipped)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **dict(options or {}))
    except (KafkaError, OSError) as e:
        log.warning("cannot read topic ids (%s); stored offsets are used as they are", e)
        return {}
    try:
        described = admin.describe_topics(list(topics))
    except (KafkaError, OSError) as e:
        log.warning("cannot read topic ids (%s); stored offsets are used as they are", e)
        return {}
    finally:
        admin.close()
    zero = "00000000-0000-0000-0000-000000000000"
    return {
        t["name"]: str(t["topic_id"])
        for t in described
        if not t.get("error_code") and t.get("topic_id") and str(t["topic_id"]) != zero
    }


def forget_offsets_of_recreated_topics(redis, prefix: str, current: Mapping[str, str]) -> dict[str, list[str]]:
    """Compare ``current`` topic ids with those stored under ``{prefix}agg:topic_ids``; for each
    topic whose id changed, delete its fields of ``{prefix}agg:offsets``. Then store ``current``.
    Returns {topic: [forgotten "topic:partition=offset"]} for the recreated topics."""
    ids_key, offsets_key = f"{prefix}agg:topic_ids", f"{prefix}agg:offsets"
    stored = redis.hgetall(ids_key)
    offsets = redis.hgetall(offsets_key)
    forgotten: dict[str, list[str]] = {}
    for topic, topic_id in current.items():
        old = stored.get(topic)
        if old is None or old == topic_id:
            continue
        fields = [f for f in offsets if f.rsplit(":", 1)[0] == topic]
        if fields:
            redis.hdel(offsets_key, *fields)
        forgotten[topic] = [f"{f}={offsets[f]}" for f in fields]
        log.warning(
            "topic %s was recreated (id %s, was %s; e.g. the embedded broker restarted): forgetting its stored "
            "offsets %s and reading the new log from the group's position (the beginning on a fresh broker)",
            topic, topic_id, old, ", ".join(forgotten[topic]) or "(none)",
        )  # fmt: skip
    if current:
        redis.hset(ids_key, mapping=dict(current))
    return forgotten


def check_topics(redis, prefix: str, bootstrap: str, topics: Iterable[str], options=None) -> dict[str, list[str]]:
    """Both steps: read the ids, forget offsets into logs that no longer exist."""
    return forget_offsets_of_recreated_topics(redis, prefix, topic_ids(bootstrap, topics, options))
