"""Replay buffer: latest record per impression, bound, recency-weighted sampling."""

from __future__ import annotations

import random

import pytest

from schemas.behavior import BehaviorRecord
from trainer.replay_buffer import ReplayBuffer


def rec(i: int, likes: int = 0, t: float = 0.0) -> BehaviorRecord:
    return BehaviorRecord(
        impression_id=f"imp-{i}",
        query=f"q{i}",
        response=f"a{i}",
        behavior_prompt="b",
        adapter_version="base",
        counts={"view": 1, "like": likes},
        buckets={"like": likes},
        behavior_text="t",
        reward=float(likes),
        updated_at=t or float(i),
    )


def test_keeps_only_the_latest_record_per_impression_and_moves_it_to_the_newest_end():
    buf = ReplayBuffer(capacity=10)
    for i in range(3):
        buf.add(rec(i))
    buf.add(rec(0, likes=2, t=100.0))
    buf.add(rec(0, likes=1, t=50.0))  # an older update arriving late never wins
    assert len(buf) == 3 and buf.added == 5
    assert [r.impression_id for r in buf.records()] == ["imp-1", "imp-2", "imp-0"]
    assert buf.records()[-1].counts["like"] == 2


def test_bounded_drops_the_record_updated_longest_ago():
    buf = ReplayBuffer(capacity=3)
    for i in range(5):
        buf.add(rec(i))
    assert [r.impression_id for r in buf.records()] == ["imp-2", "imp-3", "imp-4"]


def test_recency_weighted_sampling_prefers_new_records_and_never_repeats():
    buf = ReplayBuffer(capacity=100, half_life=10)
    for i in range(100):
        buf.add(rec(i))
    rng = random.Random(0)
    newest_half = 0
    for _ in range(200):
        picked = buf.sample(10, rng)
        assert len({r.impression_id for r in picked}) == 10
        newest_half += sum(int(r.impression_id.split("-")[1]) >= 50 for r in picked)
    # weights of the newest 50 sum to ~97% of the total; uniform sampling would give 50%
    assert newest_half / 2000 > 0.9
    uniform = ReplayBuffer(capacity=100)
    for i in range(100):
        uniform.add(rec(i))
    share = sum(int(r.impression_id.split("-")[1]) >= 50 for _ in range(200) for r in uniform.sample(10, rng)) / 2000
    assert 0.4 < share < 0.6
    assert len(buf.sample(1000)) == 100


def test_rejects_bad_bounds():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="half_life"):
        ReplayBuffer(5, half_life=-1)


def test_continual_draw_takes_what_the_active_version_has_not_learned_from_first():
    """E50: a plain draw of 2,000 from 940 records took all of them, two old-taste records for each new one."""
    buf = ReplayBuffer(capacity=2000, half_life=5000)
    for i in range(940):
        buf.add(rec(i, t=float(i + 1)))
    cut = 640.0  # records 0..639 (updated_at 1..640) are what the active version learned from
    plain = buf.sample(2000, random.Random(0))
    assert len(plain) == 940  # the old behaviour, unchanged without replay_share
    drawn = buf.sample(2000, random.Random(0), fresh_since=cut, replay_share=0.25)
    fresh = [r for r in drawn if r.updated_at > cut]
    assert len(fresh) == 300 and len(drawn) == 400  # every new record, one old for three new
    assert [r.updated_at for r in drawn] == sorted(r.updated_at for r in drawn)  # oldest update first
    capped = buf.sample(200, random.Random(1), fresh_since=cut, replay_share=0.25)
    assert len(capped) == 200 and sum(r.updated_at > cut for r in capped) == 150
    assert len(buf.sample(2000, random.Random(0), fresh_since=cut, replay_share=0.0)) == 300
    nothing_new = buf.sample(100, random.Random(0), fresh_since=1e9, replay_share=0.25)
    assert len(nothing_new) == 100  # no fresh record: the usual draw from the whole buffer
    assert buf.sample(2000, random.Random(0), fresh_since=None, replay_share=0.25) == plain
    with pytest.raises(ValueError, match="replay_share"):
        buf.sample(10, fresh_since=cut, replay_share=1.0)


def test_continual_draw_weighs_the_older_records_by_recency():
    buf = ReplayBuffer(capacity=2000, half_life=50)
    for i in range(700):
        buf.add(rec(i, t=float(i + 1)))
    drawn = buf.sample(1000, random.Random(3), fresh_since=600.0, replay_share=0.5)
    old = [r.updated_at for r in drawn if r.updated_at <= 600.0]
    assert len(old) == 100 and sum(t > 400 for t in old) > 90  # mostly the most recent of the older records
