"""The aggregator's pure core: decoding, dead letters, the reference fold, records, export views."""

from __future__ import annotations

import base64
import json

from core.behavior.encoding import PaperEncoding, RatesEncoding
from schemas import BehaviorRecord, FeedbackEvent, Impression
from service.aggregator.export import dpo_pairs, latest_per_impression
from service.aggregator.fold import Fold, RawMessage, build_record, plan_batch


def _imp(iid: str, query: str = "q", response: str = "r") -> Impression:
    return Impression(impression_id=iid, query=query, behavior="b", response=response, adapter_version="v1")


def _ev(eid: str, iid: str, kind: str = "like", value: float = 1.0) -> FeedbackEvent:
    return FeedbackEvent(event_id=eid, impression_id=iid, kind=kind, value=value)


def _msg(role: str, model) -> RawMessage:
    return RawMessage(role, model.model_dump_json().encode(), b"k", "t", 0, 0)


def test_plan_batch_decodes_dedupes_and_dead_letters_garbage():
    garbage = RawMessage("event", b"\xff\x00not json", b"key", "feedback", 3, 17)
    wrong_kind = RawMessage("event", json.dumps({"event_id": "x", "impression_id": "i", "kind": "love"}).encode())
    plan = plan_batch(
        [
            _msg("impression", _imp("i1")),
            _msg("event", _ev("e1", "i1")),
            _msg("event", _ev("e1", "i1")),
            _msg("event", _ev("e1", "i2")),
            garbage,
            wrong_kind,
            RawMessage("impression", None),
            RawMessage("impression", b'{"impression_id": "x"}'),
        ]
    )
    assert [i.impression_id for i in plan.impressions] == ["i1"]
    assert [(e.event_id, e.impression_id) for e, _raw in plan.events] == [("e1", "i1"), ("e1", "i2")]
    reasons = [d.reason for d in plan.dead]
    assert len(reasons) == 4
    assert "not a valid feedback event" in reasons[0] and "Invalid JSON" in reasons[0]
    assert reasons[1].startswith("not a valid feedback event: kind")
    assert "null value" in reasons[2]
    assert reasons[3].startswith("not a valid impression")
    env = json.loads(plan.dead[0].envelope())
    assert base64.b64decode(env["value_b64"]) == b"\xff\x00not json"
    assert (env["source_topic"], env["partition"], env["offset"], base64.b64decode(env["key_b64"])) == (
        "feedback",
        3,
        17,
        b"key",
    )


def test_fold_joins_late_impressions_and_counts_each_event_once():
    fold = Fold().apply_all(
        [
            _ev("a", "i1", "view"),
            _ev("b", "i1", "like"),
            _ev("b", "i1", "like"),  # before the impression
            _imp("i1"),
            _ev("a", "i1", "view"),
            _ev("c", "i1", "dwell", 12.5),
            _ev("d", "i2", "like"),
        ]
    )
    assert fold.counts == {"i1": {"view": 1.0, "like": 1.0, "dwell": 12.5}}
    assert set(fold.pending) == {"i2"}


def test_build_record_carries_everything_the_trainer_reads():
    counts = {"view": 10.0, "like": 4.0, "dislike": 0.0, "click": 2.0}
    rec = build_record(_imp("i1", "why?", "because"), counts, RatesEncoding(), now=5.0)
    assert rec.buckets == {"like_rate": 2, "dislike_rate": 0}
    assert rec.behavior_text == "Users liked this answer at a high rate and disliked it at a low rate."
    assert rec.reward == (4 - 0) / (10 + 2)
    assert (rec.query, rec.response, rec.behavior_prompt, rec.adapter_version) == ("why?", "because", "b", "v1")
    assert rec.encoding == "rates" and rec.updated_at == 5.0
    paper = build_record(_imp("i1"), counts, PaperEncoding())
    assert paper.encoding == "paper" and set(paper.buckets) == {"view", "click", "like", "dislike"}


def _rec(iid: str, query: str, response: str, reward: float, t: float = 0.0) -> BehaviorRecord:
    return BehaviorRecord(
        impression_id=iid,
        query=query,
        response=response,
        behavior_prompt="",
        adapter_version="v",
        counts={},
        buckets={},
        behavior_text="",
        reward=reward,
        updated_at=t,
    )


def test_export_views_latest_record_and_dpo_pairs():
    recs = [
        _rec("a", "q1", "good", 0.1, 1),
        _rec("a", "q1", "good", 0.5, 2),
        _rec("b", "q1", "bad", -0.2, 1),
        _rec("c", "q1", "same", 0.5, 1),
        _rec("d", "q2", "alone", 0.3, 1),
    ]
    latest = latest_per_impression(recs)
    assert {r.impression_id: r.reward for r in latest} == {"a": 0.5, "b": -0.2, "c": 0.5, "d": 0.3}
    pairs = dpo_pairs(latest)
    # a and c tie (no pair); each beats b; q2 has a single record (no pair).
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("good", "bad"), ("same", "bad")]
    assert all(p["prompt"] == "q1" and p["chosen_reward"] > p["rejected_reward"] for p in pairs)
