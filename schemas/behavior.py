"""A behavior record: one impression joined with the reactions it received, encoded
the way the paper describes (section 3): smoothed, bucketed, rendered as a sentence,
plus the shaped reward. Published on ``behavior-records`` keyed by impression id; the
latest record for an impression supersedes earlier ones."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.impression import Arm

Count = Annotated[float, Field(ge=0, allow_inf_nan=False)]

SCHEMA_VERSION = 1


class BehaviorRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    impression_id: str
    query: str
    response: str
    behavior_prompt: str = Field(description="The behavior sentence the answer was served under.")
    adapter_version: str
    counts: dict[str, Count] = Field(description="Raw indicator totals, e.g. {'view': 3, 'like': 1}.")
    buckets: dict[str, int] = Field(description="Bucket index per encoded indicator, 0 = lowest.")
    behavior_text: str = Field(description="The buckets rendered as one natural-language sentence.")
    reward: float = Field(
        allow_inf_nan=False, description="(likes - dislikes) / (views + clicks); 0 when the denominator is 0."
    )
    encoding: str = Field(default="", description="Name of the encoding that produced buckets/text.")
    arm: Arm | None = Field(default=None, description="The impression's A/B arm (schemas.impression), if any.")
    trial: str | None = Field(default=None, description="The impression's A/B trial (candidate name), if any.")
    updated_at: float = Field(default_factory=time.time)
