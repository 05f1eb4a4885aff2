"""core.process_status on the real Redis: members, TTL, stale/down, curves, Wilson interval."""

from __future__ import annotations

import time

import pytest

from core.process_status import (
    CURVE_POINTS_KEPT,
    CURVE_ROUNDS_KEPT,
    clear_status,
    publish_status,
    push_curve_points,
    read_curve,
    read_status,
    status_key,
    wilson_interval,
)


def test_members_are_up_until_they_stop_writing(redis_client, redis_prefix):
    assert read_status(redis_client, redis_prefix, "aggregator") == {"state": "down", "members": []}
    publish_status(redis_client, redis_prefix, "aggregator", {"lag": 3}, period_s=1.0, member="a")
    publish_status(redis_client, redis_prefix, "aggregator", {"lag": 4}, period_s=1.0, member="b")
    got = read_status(redis_client, redis_prefix, "aggregator")
    assert got["state"] == "up" and [m["member"] for m in got["members"]] == ["a", "b"]
    assert [m["lag"] for m in got["members"]] == [3, 4] and not any(m["stale"] for m in got["members"])
    # The hash expires when nobody renews it (3 periods): a dead deployment reads as down.
    assert 0 < redis_client.ttl(status_key(redis_prefix, "aggregator")) <= 3
    # Seen from 10 s later, both have been silent for longer than their TTL.
    later = read_status(redis_client, redis_prefix, "aggregator", now=time.time() + 10)
    assert later["state"] == "down" and all(m["stale"] for m in later["members"])
    clear_status(redis_client, redis_prefix, "aggregator", member="a")
    assert [m["member"] for m in read_status(redis_client, redis_prefix, "aggregator")["members"]] == ["b"]


def test_a_damaged_entry_is_skipped_not_fatal(redis_client, redis_prefix):
    redis_client.hset(status_key(redis_prefix, "trainer"), "x", "not json")
    publish_status(redis_client, redis_prefix, "trainer", {"phase": "idle"}, period_s=2.0, member="t")
    got = read_status(redis_client, redis_prefix, "trainer")
    assert got["state"] == "up" and [m["member"] for m in got["members"]] == ["t"]


def test_curves_are_bounded_in_points_and_rounds(redis_client, redis_prefix):
    push_curve_points(redis_client, redis_prefix, 1, [{"i": i} for i in range(CURVE_POINTS_KEPT + 7)])
    points = read_curve(redis_client, redis_prefix, 1)
    assert len(points) == CURVE_POINTS_KEPT and points[0] == {"i": 7}
    push_curve_points(redis_client, redis_prefix, 1 + CURVE_ROUNDS_KEPT, [{"i": 0}])
    assert read_curve(redis_client, redis_prefix, 1) == []  # the oldest round's curve is dropped
    assert read_curve(redis_client, redis_prefix, 1 + CURVE_ROUNDS_KEPT) == [{"i": 0}]


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)  # not the degenerate [0, 0] of the normal one
    assert wilson_interval(30, 20)[1] == 1.0  # more likes than views (likes without a view) stays within [0, 1]
