"""One served answer, as logged to the ``impressions`` topic (key = impression id).

During an A/B trial (core/registry.py: a gated candidate serves a share of live traffic next to
the active version) the API records which arm answered (``arm``) and which trial it was
(``trial``: the candidate's name), so the trainer's guardrail compares the two arms over the
same period only.

A streaming client may leave before the answer is complete, even before its first token; it
already holds the impression id (sent in the stream's headers), so the impression is logged
anyway, with the text it was shown (possibly empty) and ``aborted`` set: every id the API
hands out has its impression, so feedback for it always joins (issue 16, item 4). Readers of
older records get ``aborted`` False; readers older than the field ignore it (extra="ignore")."""

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
    aborted: bool = Field(
        default=False,
        description="The client left (or generation failed) before the answer was complete: 'response' is "
        "only what was shown, possibly empty.",
    )
    created_at: float = Field(default_factory=time.time)
