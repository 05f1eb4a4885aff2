"""POST /v1/chat/completions, OpenAI-compatible (plain and streaming).

The conversation becomes the query of core.prompts.render_prompt (so serving and training
share one prompt layout): a single user message is the query as is; client system
messages and earlier turns are folded in front of the last user message as plain text
("User: ... / Assistant: ..."). The behavior sentence goes where render_prompt puts it (the
system message): ``behavior`` in the body (``extra_body`` in OpenAI clients), else the
most preferred behavior.

``model`` picks the adapter version: 'rlhb-latest' (the active one), 'base', or a version
name. The response's ``model`` is the version that produced it; ``impression_id`` comes back
in the body, in every stream chunk and in the ``X-Impression-Id`` header; it is bound to the
client key of ``X-Client-Id`` (OpenAI clients: ``default_headers``), or to one the API issues
and returns in that header: feedback must send the same key. A stream the client
leaves early (even before the first token) still logs its impression, with what was shown and
``aborted`` set (service.api.answer.abandon).
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, HTTPException, Response

from schemas.api import QUERY_MAX_CHARS
from schemas.openai import (
    MAX_STOP,
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from service.api.answer import TurnStream, abandon, end_turn, record, start_turn
from service.api.backends.base import GenerationResult
from service.api.deps import CLIENT_HEADER, ClientKey, IsAdmin, State
from service.api.edge import request_id
from service.api.errors_doc import errors

log = logging.getLogger(__name__)
router = APIRouter(tags=["generation"])


SSE_CHUNK = {
    "type": "object",
    "description": "One server-sent event: ``data`` is a chat.completion.chunk (JSON), an in-band "
    '``{"error": ...}``, or ``[DONE]`` last.',
    "properties": {"data": {"type": "string"}},
    "required": ["data"],
}
"""The OpenAPI schema of each event of a streamed chat completion."""


def _text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise HTTPException(422, f"messages[{index}].content: only text parts are supported (got {part.type!r})")
        texts.append(part.text)
    return "".join(texts)


def conversation_query(messages: list[ChatMessage]) -> str:
    """The query for render_prompt (see the module docstring). 422 when the last message is not a
    non-empty user message."""
    last = messages[-1]
    if last.role != "user":
        raise HTTPException(
            422, f"messages[{len(messages) - 1}]: the last message must have role 'user' (got {last.role!r})"
        )
    question = _text(last, len(messages) - 1)
    if not question.strip():
        raise HTTPException(422, f"messages[{len(messages) - 1}].content: the question is empty")
    context = []
    for i, m in enumerate(messages[:-1]):
        text = _text(m, i).strip()
        if not text:
            continue
        if m.role in ("system", "developer"):
            context.append(text)
        else:
            context.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    query = "\n\n".join([*context, question]) if context else question
    if len(query) > QUERY_MAX_CHARS:
        raise HTTPException(
            422, f"messages: the conversation is {len(query)} characters; at most {QUERY_MAX_CHARS} are accepted"
        )
    return query


def stops_of(body: ChatCompletionRequest) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP:
        raise HTTPException(422, f"stop: at most {MAX_STOP} stop sequences (got {len(stops)})")
    return [s for s in stops if s]


class StopScanner:
    """Cuts streamed text at the first stop sequence, holding back just enough characters
    that a stop split across deltas is still caught."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.hit = False

    def feed(self, delta: str) -> str:
        if self.hit:  # already cut: nothing after the stop sequence is shown
            return ""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out = self.text[self.emitted : cut]
            self.text, self.emitted = self.text[:cut], cut
            return out
        end = max(self.emitted, len(self.text) - self.hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def finish(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


def _usage(result: GenerationResult) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        200: {
            "description": "A chat.completion, or chat.completion.chunk server-sent events when stream=true.",
            "content": {"text/event-stream": {"schema": SSE_CHUNK}},
        },
        **errors(
            400,
            403,
            404,
            409,
            422,
            503,
            e403="The named version is neither the active one, a live A/B arm nor 'base': it needs the admin token.",
            e404="Unknown model (adapter version).",
            e503="Model not loaded yet, or the impression outbox (or its disk) is full.",
        ),
    },
)
async def chat_completions(
    body: ChatCompletionRequest, state: State, response: Response, admin: IsAdmin, client_key: ClientKey
):
    """OpenAI-compatible chat completion with the active (or named) adapter version. Any client
    may name 'rlhb-latest', 'base', the active version or a live A/B arm; other versions need
    the admin token (sent as the OpenAI client's ``api_key``)."""
    query = conversation_query(body.messages)
    stops = stops_of(body)
    turn = await start_turn(
        state,
        query=query,
        behavior=body.behavior,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        model=body.model,
        admin=admin,
        client_key=client_key,
    )
    completion_id = f"chatcmpl-{turn.impression_id.split('.')[0]}"
    headers = {
        "X-Impression-Id": turn.impression_id,
        "X-Adapter-Version": turn.version_name,
        CLIENT_HEADER: turn.client_key,
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return TurnStream(_stream(state, turn, completion_id, stops, include_usage), state, turn, "chat", headers)
    try:
        result = await state.backend.generate(turn.request, turn.cancel)
    finally:
        end_turn(state, turn)
    scanner = StopScanner(stops)
    text = scanner.feed(result.text) + scanner.finish()
    if scanner.hit:
        result = GenerationResult(
            text=text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason="stop",
            adapter_version=result.adapter_version,
        )
    await record(state, turn, result, "chat")
    response.headers.update(headers)
    return ChatCompletionResponse(
        id=completion_id,
        created=int(time.time()),
        model=result.adapter_version,
        choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=_finish(result))],
        usage=_usage(result),
        impression_id=turn.impression_id,
        adapter_version=result.adapter_version,
        behavior=turn.behavior,
    )


def _finish(result: GenerationResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


async def _stream(state, turn, completion_id: str, stops: list[str], include_usage: bool):
    created = int(time.time())
    scanner = StopScanner(stops)
    result: GenerationResult | None = None

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
        c = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=turn.version_name,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [],
            usage=usage,
            impression_id=turn.impression_id,
            adapter_version=turn.version_name,
        )
        return f"data: {c.model_dump_json(exclude_none=False)}\n\n"

    try:
        yield chunk(Delta(role="assistant", content=""))
        async for item in state.backend.stream(turn.request, turn.cancel):
            if isinstance(item, GenerationResult):
                result = item
                break
            out = scanner.feed(item)
            if out:
                turn.shown += out
                yield chunk(Delta(content=out))
            if scanner.hit:
                turn.cancel.cancelled = True  # stop generating: the rest would be cut anyway
        tail = scanner.finish()
        if tail:
            turn.shown += tail
            yield chunk(Delta(content=tail))
        end_turn(state, turn)
        if result is None or scanner.hit:
            base = result or GenerationResult(
                text="", prompt_tokens=0, completion_tokens=0, finish_reason="stop", adapter_version=turn.version_name
            )
            result = GenerationResult(
                text=scanner.text,
                prompt_tokens=base.prompt_tokens,
                completion_tokens=base.completion_tokens,
                finish_reason="stop",
                adapter_version=turn.version_name,
            )
        await record(state, turn, result, "chat")
        yield chunk(Delta(), finish=_finish(result))
        if include_usage:
            yield chunk(Delta(), usage=_usage(result), choices=False)
        yield "data: [DONE]\n\n"
    except Exception:  # noqa: BLE001 - headers are sent: report in-band, OpenAI style (no exception text)
        log.exception("chat stream failed")
        message = f"generation failed (request id {request_id()}; details in the server log)"
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
    finally:
        abandon(state, turn, "chat")  # a no-op once logged; else (client left, failure) logs it aborted
