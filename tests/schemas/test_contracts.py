"""The shared contracts: validation at the edge, and cheap to import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from schemas import AdapterVersion, BehaviorRecord, FeedbackBatch, FeedbackEvent

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


def test_wire_format_round_trips_as_json():
    event = FeedbackEvent(event_id="e", impression_id="i.s", kind="view", ts=1.5)
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
