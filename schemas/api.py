"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.feedback import FeedbackEvent

FEEDBACK_BATCH_LIMIT = 1000
"""Most events accepted in one POST /v1/feedback; larger batches get 413-style 422."""

QUERY_MAX_CHARS = 4000


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=QUERY_MAX_CHARS)
    behavior: str | None = Field(
        default=None,
        max_length=1000,
        description="Behavior sentence to condition on; default: the most preferred behavior.",
    )
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool = False


class QueryResponse(BaseModel):
    answer: str
    impression_id: str
    adapter_version: str
    behavior: str


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] = Field(min_length=1, max_length=FEEDBACK_BATCH_LIMIT)


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="Events written to the event log by this request.")
    duplicates: int = Field(
        default=0,
        description="Count events (once per impression and client) already recorded earlier, not written again.",
    )


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI-style error type, e.g. invalid_request_error, service_unavailable.")
    code: int = Field(description="The HTTP status.")


class ErrorBody(BaseModel):
    """Every HTTP error: ``detail`` for plain clients, ``error`` for OpenAI clients (same message)."""

    detail: str
    error: ErrorDetail
