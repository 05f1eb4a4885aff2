"""The guardrail's sequential test on synthetic counts: fires on a clear drop, rarely on noise."""

from __future__ import annotations

import random

import pytest

from schemas.behavior import BehaviorRecord
from trainer.guardrail import GuardrailConfig, LiveCounts, ab_test, drop_test

CFG = GuardrailConfig()


def run_stream(
    rng: random.Random,
    p_child: float,
    p_parent: float = 0.3,
    parent_views: int = 2000,
    max_views: int = 2000,
    look_every: int = 10,
) -> int | None:
    """Feed child views one by one, test every ``look_every``; views at the first rollback (None: never)."""
    parent_likes = sum(rng.random() < p_parent for _ in range(parent_views))
    likes = 0
    for n in range(1, max_views + 1):
        likes += rng.random() < p_child
        if n % look_every == 0 and drop_test(likes, n, parent_likes, parent_views, CFG).rollback:
            return n
    return None


def test_rolls_back_on_a_clear_drop_within_a_few_hundred_views():
    rng = random.Random(1)
    stops = [run_stream(rng, p_child=0.15) for _ in range(50)]
    assert all(s is not None for s in stops)
    assert sorted(stops)[25] <= 400  # median detection delay


def test_noise_rarely_triggers_even_with_200_looks():
    rng = random.Random(2)
    false_alarms = sum(run_stream(rng, p_child=0.3) is not None for _ in range(300))
    # alpha = 0.05 bounds the chance of ever firing over all looks (plus noise in the parent's estimate)
    assert false_alarms / 300 <= 0.07
    better = sum(run_stream(rng, p_child=0.4) is not None for _ in range(100))
    assert better == 0  # one-sided: a better version is never rolled back


def test_waits_for_min_views_and_respects_the_margin():
    assert not drop_test(0, 50, 300, 1000, CFG).rollback  # 0% vs 30% but only 50 views
    assert drop_test(0, 100, 300, 1000, CFG).rollback
    small_drop = dict(child_likes=2700, child_views=10_000, parent_likes=3000, parent_views=10_000)
    assert drop_test(**small_drop, config=CFG).rollback  # 27% vs 30% on 10k views is significant
    assert not drop_test(**small_drop, config=GuardrailConfig(margin=0.05)).rollback  # but under a 5-point margin
    with pytest.raises(ValueError, match="alpha"):
        GuardrailConfig(alpha=0)


def test_ab_trial_rejects_a_drop_promotes_otherwise_and_says_which():
    """Same period, two arms: a clear drop rejects; a clear rise promotes and says it is significant
    (Lambda is past 1/alpha there too, in the other direction); a tie promotes after min_views."""
    drop = ab_test(60, 500, 150, 500, min_views=200)
    assert drop.outcome == "reject" and "below the active arm's" in drop.reason
    rise = ab_test(240, 500, 100, 500, min_views=200)
    assert rise.outcome == "promote" and rise.statistic >= 20
    assert "significantly ahead" in rise.reason and ">= 1/alpha=20" in rise.reason
    tie = ab_test(100, 500, 100, 500, min_views=200)
    assert tie.outcome == "promote" and "no significant drop" in tie.reason and "< 1/alpha=20" in tie.reason
    assert ab_test(100, 150, 100, 500, min_views=200).outcome == "wait"


def test_live_counts_keep_the_latest_record_per_impression():
    def rec(iid, version, views, likes, t):
        return BehaviorRecord(
            impression_id=iid,
            query="q",
            response="a",
            behavior_prompt="b",
            adapter_version=version,
            counts={"view": views, "like": likes},
            buckets={},
            behavior_text="",
            reward=0.0,
            updated_at=t,
        )

    live = LiveCounts()
    live.add(rec("i1", "v1", 1, 0, 1.0))
    live.add(rec("i1", "v1", 3, 1, 2.0))
    live.add(rec("i1", "v1", 2, 0, 1.5))  # stale: ignored
    live.add(rec("i2", "v2", 4, 2, 1.0))
    assert live.get("v1") == (3.0, 1.0) and live.get("v2") == (4.0, 2.0) and live.get("base") == (0.0, 0.0)
