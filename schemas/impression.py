"""One served answer, as logged to the ``impressions`` topic (key = impression id).

During an A/B trial (core/registry.py: a gated candidate serves a share of live traffic next to
the active version) the API records which arm answered (``arm``) and which trial it was
(``trial``: the candidate's name), so the trainer's guardrail compares the two arms over the
same period only."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Arm = Literal["active", "candidate"]
"""The arm of an A/B trial that served an answer."""


class Impression(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    impression_id: str = Field(min_length=1, max_length=256, description="Signed id (HMAC) given to the client.")
    query: str = Field(description="The user's question as received.")
    behavior: str = Field(description="The behavior sentence the answer was conditioned on.")
    response: str = Field(description="The generated answer.")
    adapter_version: str = Field(description="Adapter version name that produced the answer, or 'base'.")
    model: str = Field(default="", description="Base model identifier.")
    arm: Arm | None = Field(
        default=None, description="A/B trial arm that answered ('active' | 'candidate'); absent outside a trial."
    )
    trial: str | None = Field(
        default=None, description="The A/B trial (its candidate's version name) live when served; absent outside."
    )
    created_at: float = Field(default_factory=time.time)
