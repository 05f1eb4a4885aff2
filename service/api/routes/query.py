"""POST /v1/query: an answer conditioned on a behavior sentence, plus its signed impression id.

With ``"stream": true`` the answer comes as server-sent events::

    event: meta    data: {"impression_id": ..., "adapter_version": ..., "behavior": ...}
    event: token   data: {"text": "<delta>"}            (repeated)
    event: done    data: {"answer": ..., "impression_id": ..., "adapter_version": ...,
                          "behavior": ..., "finish_reason": ..., "completion_tokens": ...}

The impression id and version are also in the ``X-Impression-Id`` / ``X-Adapter-Version``
headers. The impression is logged once the answer is complete (or cut short by the client).
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from schemas.api import QueryRequest, QueryResponse
from service.api.answer import end_turn, record, record_later, start_turn
from service.api.backends.base import GenerationResult
from service.api.deps import State
from service.api.edge import request_id
from service.api.errors_doc import errors

log = logging.getLogger(__name__)
router = APIRouter(tags=["generation"])


def _headers(turn) -> dict[str, str]:
    return {"X-Impression-Id": turn.impression_id, "X-Adapter-Version": turn.version_name}


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post(
    "/v1/query",
    response_model=QueryResponse,
    responses={
        200: {"description": "The answer (JSON), or server-sent events when stream=true."},
        **errors(400, 422, 503, e503="Model not loaded yet, or the impression outbox is full (broker away)."),
    },
)
async def query(body: QueryRequest, state: State, response: Response):
    """Answer ``query`` under ``behavior`` (default: the most preferred behavior)."""
    turn = await start_turn(
        state,
        query=body.query,
        behavior=body.behavior,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=None,
        model=None,
    )
    if body.stream:
        return StreamingResponse(
            _stream(state, turn),
            media_type="text/event-stream",
            headers={**_headers(turn), "Cache-Control": "no-cache"},
        )
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
    parts: list[str] = []
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
                parts.append(item)
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
        end_turn(state, turn)
        if result is None and parts:  # the client left mid-answer: log what it was shown
            record_later(
                state,
                turn,
                GenerationResult(
                    text="".join(parts),
                    prompt_tokens=0,
                    completion_tokens=len(parts),
                    finish_reason="cancelled",
                    adapter_version=turn.version_name,
                ),
                "query",
            )
