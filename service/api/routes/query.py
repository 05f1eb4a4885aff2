"""POST /v1/query: an answer conditioned on a behavior sentence, plus its signed impression id.

With ``"stream": true`` the answer comes as server-sent events::

    event: meta    data: {"impression_id": ..., "adapter_version": ..., "behavior": ...}
    event: token   data: {"text": "<delta>"}            (repeated)
    event: done    data: {"answer": ..., "impression_id": ..., "adapter_version": ...,
                          "behavior": ..., "finish_reason": ..., "completion_tokens": ...}

The impression id and version are also in the ``X-Impression-Id`` / ``X-Adapter-Version``
headers. The id is bound to the client key sent as ``X-Client-Id`` (or, without one, a key the
API issues): ``X-Client-Id`` comes back with every answer, and feedback must send it.

The impression is logged once the answer is complete; a stream the client leaves early (even
before the first token) or that fails is logged too, with the text shown so far and ``aborted``
set (service.api.answer.abandon): every id handed out has its impression.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Response

from schemas.api import QueryRequest, QueryResponse
from service.api.answer import TurnStream, abandon, end_turn, record, start_turn
from service.api.backends.base import GenerationResult
from service.api.deps import CLIENT_HEADER, ClientKey, State
from service.api.edge import request_id
from service.api.errors_doc import errors

log = logging.getLogger(__name__)
router = APIRouter(tags=["generation"])


SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event; ``data`` is a JSON object (see the module docstring).",
    "properties": {"event": {"type": "string", "enum": ["meta", "token", "done", "error"]}, "data": {"type": "string"}},
    "required": ["event", "data"],
}
"""The OpenAPI schema of each event of a streamed answer (what schemathesis checks them against)."""


def _headers(turn) -> dict[str, str]:
    return {
        "X-Impression-Id": turn.impression_id,
        "X-Adapter-Version": turn.version_name,
        CLIENT_HEADER: turn.client_key,
    }


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post(
    "/v1/query",
    response_model=QueryResponse,
    responses={
        200: {
            "description": "The answer (JSON), or server-sent events when stream=true.",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **errors(400, 422, 503, e503="Model not loaded yet, or the impression outbox (or its disk) is full."),
    },
)
async def query(body: QueryRequest, state: State, response: Response, client_key: ClientKey):
    """Answer ``query`` under ``behavior`` (default: the most preferred behavior)."""
    turn = await start_turn(
        state,
        query=body.query,
        behavior=body.behavior,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=None,
        model=None,
        client_key=client_key,
    )
    if body.stream:
        return TurnStream(_stream(state, turn), state, turn, "query", _headers(turn))
    try:
        result = await state.backend.generate(turn.request, turn.cancel)
    finally:
        end_turn(state, turn)
    await record(state, turn, result, "query")
    response.headers.update(_headers(turn))
    return QueryResponse(
        answer=result.text,
        impression_id=turn.impression_id,
        adapter_version=result.adapter_version,
        behavior=turn.behavior,
    )


async def _stream(state, turn):
    result: GenerationResult | None = None
    try:
        yield sse(
            "meta",
            {"impression_id": turn.impression_id, "adapter_version": turn.version_name, "behavior": turn.behavior},
        )
        async for item in state.backend.stream(turn.request, turn.cancel):
            if isinstance(item, GenerationResult):
                result = item
            else:
                turn.shown += item
                yield sse("token", {"text": item})
        end_turn(state, turn)
        await record(state, turn, result, "query")
        yield sse(
            "done",
            {
                "answer": result.text,
                "impression_id": turn.impression_id,
                "adapter_version": result.adapter_version,
                "behavior": turn.behavior,
                "finish_reason": result.finish_reason,
                "completion_tokens": result.completion_tokens,
            },
        )
    except Exception:  # noqa: BLE001 - headers are sent: report in-band (no exception text)
        log.exception("stream failed")
        yield sse("error", {"message": f"generation failed (request id {request_id()}; details in the server log)"})
    finally:
        abandon(state, turn, "query")  # a no-op once logged; else (client left, failure) logs it aborted
