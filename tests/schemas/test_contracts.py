"""The shared contracts: validation at the edge, and cheap to import."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from schemas import AdapterVersion, BehaviorRecord, FeedbackBatch, FeedbackEvent
from schemas.feedback import MAX_DWELL_S

RECORD = dict(
    impression_id="i.s",
    query="q",
    response="a",
    behavior_prompt="b",
    adapter_version="base",
    counts={"view": 2, "like": 1},
    buckets={"like_rate": 2},
    behavior_text="t",
    reward=0.5,
)


def test_behavior_record_refuses_non_finite_rewards_and_negative_counts():
    assert BehaviorRecord(**RECORD).reward == 0.5
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError, match="reward"):
            BehaviorRecord(**{**RECORD, "reward": bad})
    with pytest.raises(ValidationError, match="counts"):
        BehaviorRecord(**{**RECORD, "counts": {"view": -1}})
    with pytest.raises(ValidationError, match="counts"):
        BehaviorRecord(**{**RECORD, "counts": {"view": math.nan}})


def test_feedback_event_validation_names_the_problem():
    ok = FeedbackEvent(event_id="e", impression_id="i.s", kind="like")
    assert ok.value == 1.0 and ok.kind.value == "like"
    with pytest.raises(ValidationError, match="kind"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="love")
    with pytest.raises(ValidationError, match=">= 0"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="dwell", value=-3)
    with pytest.raises(ValidationError, match="finite"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="dwell", value=math.inf)
    with pytest.raises(ValidationError):
        FeedbackBatch(events=[])


@pytest.mark.parametrize("kind", ["view", "click", "like", "dislike", "share", "requery"])
@pytest.mark.parametrize("value", [0.0, 2.0, 0.5, 1e308])
def test_count_kinds_carry_exactly_one(kind, value):
    # One event is one occurrence: `like` with value 1e308 used to pass and overflow the counters.
    assert FeedbackEvent(event_id="e", impression_id="i.s", kind=kind).value == 1.0
    assert FeedbackEvent(event_id="e", impression_id="i.s", kind=kind, value=1).value == 1.0
    with pytest.raises(ValidationError, match=f"value must be 1 for a {kind} event"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind=kind, value=value)


def test_dwell_is_bounded_seconds():
    assert FeedbackEvent(event_id="e", impression_id="i.s", kind="dwell", value=0).value == 0
    assert FeedbackEvent(event_id="e", impression_id="i.s", kind="dwell", value=MAX_DWELL_S).value == MAX_DWELL_S
    for too_long in (MAX_DWELL_S + 0.5, 1e308):
        with pytest.raises(ValidationError, match="at most 3600 seconds"):
            FeedbackEvent(event_id="e", impression_id="i.s", kind="dwell", value=too_long)


def test_ts_and_schema_version_are_bounded():
    now = time.time()
    assert FeedbackEvent(event_id="e", impression_id="i.s", kind="like", ts=now + 60).ts == now + 60  # small skew
    with pytest.raises(ValidationError, match="in the future"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="like", ts=now + 3600)
    with pytest.raises(ValidationError, match="in the future"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="like", ts=now * 1000)  # milliseconds
    with pytest.raises(ValidationError, match="before 2020"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="like", ts=1.5)
    with pytest.raises(ValidationError, match="schema_version 2 is unknown"):
        FeedbackEvent(event_id="e", impression_id="i.s", kind="like", schema_version=2)
    # The same rules hold for JSON read off the topic (the aggregator decodes with this model).
    with pytest.raises(ValidationError, match="value must be 1"):
        FeedbackEvent.model_validate_json(b'{"event_id": "e", "impression_id": "i", "kind": "like", "value": 1e308}')


def test_wire_format_round_trips_as_json():
    event = FeedbackEvent(event_id="e", impression_id="i.s", kind="view", ts=1_700_000_000.5)
    assert FeedbackEvent.model_validate_json(event.model_dump_json()) == event
    assert json.loads(event.model_dump_json())["kind"] == "view"


def test_adapter_version_is_immutable_and_named_safely():
    version = AdapterVersion(name="rlhb-3", id=3, path="/x")
    with pytest.raises(ValidationError):
        version.name = "other"
    with pytest.raises(ValidationError):
        AdapterVersion(name="../escape", id=4, path="/x")


def test_schemas_import_without_torch_or_kafka():
    code = "import sys, schemas; print(sorted(m for m in ('torch','kafka','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
