"""OpenAI-compatible request/response bodies for POST /v1/chat/completions and GET /v1/models.

Only the fields this server honours are declared. Other fields of OpenAI's chat API
(``OPENAI_IGNORED``: tools, logprobs, presence_penalty, seed, user...) are accepted and
dropped, so existing clients work unchanged; any other field is refused (422 naming it), so
a typo or an arbitrary payload is not silently carried. Sizes are bounded: a message's text
(QUERY_MAX_CHARS, also the bound of the whole conversation), content parts, stop sequences
(MAX_STOP of at most MAX_STOP_CHARS characters), and the body (RLHB_API_MAX_BODY_BYTES).

Extensions (documented in the OpenAPI schema): ``behavior`` on the request (pass it
with the client's ``extra_body``), and ``impression_id`` / ``adapter_version`` / ``behavior``
on every response and chunk (also in the ``X-Impression-Id`` and ``X-Adapter-Version`` headers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.api import QUERY_MAX_CHARS

LATEST_ALIAS = "rlhb-latest"
"""``model`` alias for the version the registry marks active (the default)."""


MAX_STOP = 4
"""Most stop sequences per request (as OpenAI)."""
MAX_STOP_CHARS = 128
"""Longest stop sequence; the stream scanner holds back this many characters."""
MAX_CONTENT_PARTS = 64

OPENAI_IGNORED = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "metadata",
        "modalities",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "store",
        "tool_choice",
        "tools",
        "top_logprobs",
        "user",
        "verbosity",
        "web_search_options",
    }
)
"""Fields of OpenAI's chat API this server accepts and ignores (it has no tools, logprobs...)."""


def _check_chars(text: str | None) -> str | None:
    if text is not None and len(text) > QUERY_MAX_CHARS:
        raise ValueError(f"{len(text)} characters; at most {QUERY_MAX_CHARS} are accepted")
    return text


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")  # image_url, input_audio...: refused by type, not stored

    type: str = Field(max_length=64)
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _bounded(cls, v: str | None) -> str | None:
        return _check_chars(v)


class ChatMessage(BaseModel):
    # OpenAI messages may carry name, tool_calls, refusal...: dropped (bounded by the body limit).
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _bounded(cls, v: Any) -> Any:
        if isinstance(v, str):
            _check_chars(v)
        elif isinstance(v, list) and len(v) > MAX_CONTENT_PARTS:
            raise ValueError(f"{len(v)} content parts; at most {MAX_CONTENT_PARTS} are accepted")
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        """Accept (and drop) the OpenAI fields this server does not implement; others are refused."""
        if isinstance(data, dict) and not OPENAI_IGNORED.isdisjoint(data):
            return {k: v for k, v in data.items() if k not in OPENAI_IGNORED}
        return data

    @field_validator("stop", mode="before")
    @classmethod
    def _bounded_stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v
        if isinstance(stops, list):
            if len(stops) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences (got {len(stops)})")
            for s in stops:
                if isinstance(s, str) and len(s) > MAX_STOP_CHARS:
                    raise ValueError(f"a stop sequence is {len(s)} characters; at most {MAX_STOP_CHARS} are accepted")
        return v

    model: str = Field(
        default=LATEST_ALIAS,
        min_length=1,
        max_length=200,
        description=(f"An adapter version name, '{LATEST_ALIAS}' (the active version) or 'base' (no adapter)."),
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 = greedy (default).")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name of max_tokens.")
    n: int = Field(default=1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        default=None, description=f"Up to {MAX_STOP} stop sequences of at most {MAX_STOP_CHARS} characters each."
    )
    behavior: str | None = Field(
        default=None,
        max_length=1000,
        description=("Extension: the behavior sentence to condition on; default: the most preferred behavior."),
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The adapter version that produced the answer ('base': no adapter).")
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    impression_id: str = Field(description="Signed id to attach feedback to (POST /v1/feedback).")
    adapter_version: str
    behavior: str


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    impression_id: str
    adapter_version: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rlhb"
    root: str | None = Field(default=None, description="The base model this version adapts.")
    parent: str | None = Field(default=None, description="The version this one was trained from.")
    status: str | None = None
    active: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
