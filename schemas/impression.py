"""One served answer, as logged to the ``impressions`` topic (key = impression id)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Impression(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    impression_id: str = Field(min_length=1, max_length=256, description="Signed id (HMAC) given to the client.")
    query: str = Field(description="The user's question as received.")
    behavior: str = Field(description="The behavior sentence the answer was conditioned on.")
    response: str = Field(description="The generated answer.")
    adapter_version: str = Field(description="Adapter version name that produced the answer, or 'base'.")
    model: str = Field(default="", description="Base model identifier.")
    created_at: float = Field(default_factory=time.time)
