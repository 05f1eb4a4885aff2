"""JSON Schemas of the wire contracts, for producers and consumers written in other languages.

The pydantic models in this package are the source of truth; the JSON files under
``schemas/json/`` are generated from them by ``rlhb schemas export`` and checked in, so a
client team can read (or code-generate from) the contract without Python. A test
(tests/schemas/test_json_schemas.py) fails when the checked-in files differ from what the
models produce now: a contract change cannot land without its regenerated schema, and the
diff of ``schemas/json/`` shows reviewers what changed on the wire.

Layout: ``topics/<topic>.json`` (the value of each Kafka message, UTF-8 JSON) and
``api/<body>.json`` (HTTP request and response bodies). Topic messages and requests are
exported in pydantic's *validation* mode (what this service accepts), responses in
*serialization* mode (what it sends).

Pure, like the rest of this package: the CLI (rlhb/schemas_cli.py) writes and compares files.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel

from schemas.api import ErrorBody, FeedbackAccepted, FeedbackBatch, QueryRequest, QueryResponse
from schemas.behavior import BehaviorRecord
from schemas.feedback import FeedbackEvent
from schemas.impression import Impression
from schemas.openai import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ModelList

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "rlhb schemas export"
"""The command that rewrites the checked-in files (error messages quote it)."""

Mode = Literal["validation", "serialization"]

# (relative file, model, mode, what it is). Topic files are named after the default topic
# names (core/settings.py); a deployment that renames a topic keeps the same message shape.
CONTRACTS: tuple[tuple[str, type[BaseModel], Mode, str], ...] = (
    ("topics/impressions.json", Impression, "validation", "Kafka topic `impressions` (key: impression id)."),
    ("topics/feedback.json", FeedbackEvent, "validation", "Kafka topic `feedback` (key: impression id)."),
    (
        "topics/behavior-records.json",
        BehaviorRecord,
        "validation",
        "Kafka topic `behavior-records` (key: impression id; the latest record per key supersedes earlier ones).",
    ),
    ("api/query-request.json", QueryRequest, "validation", "POST /v1/query request body."),
    ("api/query-response.json", QueryResponse, "serialization", "POST /v1/query response body (non-streaming)."),
    ("api/feedback-request.json", FeedbackBatch, "validation", "POST /v1/feedback request body."),
    ("api/feedback-response.json", FeedbackAccepted, "serialization", "POST /v1/feedback response body."),
    ("api/chat-completions-request.json", ChatCompletionRequest, "validation", "POST /v1/chat/completions body."),
    (
        "api/chat-completions-response.json",
        ChatCompletionResponse,
        "serialization",
        "POST /v1/chat/completions response body (non-streaming).",
    ),
    (
        "api/chat-completions-chunk.json",
        ChatCompletionChunk,
        "serialization",
        "One server-sent event of a streaming POST /v1/chat/completions.",
    ),
    ("api/models-response.json", ModelList, "serialization", "GET /v1/models response body."),
    ("api/error.json", ErrorBody, "serialization", "Body of every HTTP error response."),
)


def json_schema(model: type[BaseModel], mode: Mode, what: str) -> dict:
    """The model's JSON Schema with a dialect, a ``$comment`` saying what it describes and how
    it is made. Defaults computed at run time (``default_factory``, e.g. timestamps) are not
    part of a schema: the field is simply optional."""
    schema = model.model_json_schema(mode=mode)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": f"{what} Generated from {model.__module__}.{model.__qualname__} by `{REGENERATE}`; do not edit.",
        **schema,
    }


def render(schema: dict) -> str:
    """Stable text of one schema file: the same models always give the same bytes."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def rendered_schemas() -> dict[str, str]:
    """Relative file name -> file text, for every contract."""
    return {name: render(json_schema(model, mode, what)) for name, model, mode, what in CONTRACTS}
