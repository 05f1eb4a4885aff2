"""OpenAI-compatible request/response bodies for POST /v1/chat/completions and GET /v1/models.

Only the fields this server honours are declared; other fields OpenAI clients send (tools,
logprobs, presence_penalty, seed, user...) are accepted and ignored, so existing clients work
unchanged. Extensions (documented in the OpenAPI schema): ``behavior`` on the request (pass it
with the client's ``extra_body``), and ``impression_id`` / ``adapter_version`` / ``behavior``
on every response and chunk (also in the ``X-Impression-Id`` and ``X-Adapter-Version`` headers).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LATEST_ALIAS = "rlhb-latest"
"""``model`` alias for the version the registry marks active (the default)."""


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

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
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop sequences.")
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
