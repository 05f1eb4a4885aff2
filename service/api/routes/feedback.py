"""POST /v1/feedback: user reactions to served answers, written to the ``feedback`` topic.

Body: one FeedbackEvent, or ``{"events": [...]}`` with 1..FEEDBACK_BATCH_LIMIT events.
Every impression id must carry this server's signature. The answer is 202 only after the
broker acknowledged every write (the producer uses acks=all); when it cannot (unreachable,
timeout) the answer is 503 with Retry-After and the client retries the whole request --
the aggregator dedupes by event_id, so a retry never double-counts.

Errors (never 500): 400 body is not JSON; 413 batch over the limit or body too large;
422 a field is invalid (unknown kind, negative or non-finite value...) or an impression id
is malformed or not issued here -- the message names the field, e.g. ``events[3].kind``.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.errors import validation_message
from schemas import FEEDBACK_BATCH_LIMIT, FeedbackAccepted, FeedbackBatch, FeedbackEvent
from service.api.deps import State

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])

MAX_BODY_BYTES = FEEDBACK_BATCH_LIMIT * 2048
"""A full batch of ordinary events is ~200 bytes each; anything near this is abuse."""
ACK_TIMEOUT_S = 10.0
"""Longest wait for the broker's acknowledgements before answering 503."""
RETRY_AFTER_S = 5


def parse_events(raw: bytes) -> list[FeedbackEvent]:
    """The request body as a list of events, or HTTPException(4xx) naming what is wrong."""
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body is {len(raw)} bytes; at most {MAX_BODY_BYTES} bytes are accepted")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"body is not valid JSON: {e}") from None
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if isinstance(events, list) and len(events) > FEEDBACK_BATCH_LIMIT:
            raise HTTPException(
                413,
                f"batch has {len(events)} events; at most {FEEDBACK_BATCH_LIMIT} per request "
                "(FEEDBACK_BATCH_LIMIT): split it into several requests",
            )
        try:
            return list(FeedbackBatch.model_validate(body).events)
        except ValidationError as e:
            raise HTTPException(422, validation_message(e, first_only=False)) from None
    if not isinstance(body, dict):
        raise HTTPException(422, 'body must be a JSON object: one feedback event or {"events": [...]}')
    try:
        return [FeedbackEvent.model_validate(body)]
    except ValidationError as e:
        raise HTTPException(422, validation_message(e, first_only=False)) from None


def check_signatures(events: list[FeedbackEvent], verify) -> None:
    for i, ev in enumerate(events):
        if not verify(ev.impression_id):
            where = f"events[{i}].impression_id" if len(events) > 1 else "impression_id"
            raise HTTPException(
                422,
                f"{where}: {ev.impression_id!r} is not an impression id issued by this server "
                "(malformed or bad signature); use the impression_id returned by /v1/query",
            )


def produce_and_wait(producer, topic: str, events: list[FeedbackEvent], timeout_s: float) -> None:
    """Send every event (key = impression id) and block until the broker acknowledged all."""
    futures = [
        producer.send(topic, key=ev.impression_id.encode(), value=ev.model_dump_json().encode()) for ev in events
    ]
    deadline = time.monotonic() + timeout_s
    producer.flush(timeout=timeout_s)
    for fut in futures:
        fut.get(timeout=max(0.01, deadline - time.monotonic()))


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted)
async def post_feedback(request: Request, state: State) -> FeedbackAccepted:
    """Record user reactions (one event or a batch); 202 once the broker holds them."""
    events = parse_events(await request.body())
    check_signatures(events, state.signer.verify)
    try:
        await run_in_threadpool(produce_and_wait, state.producer, state.settings.topic_feedback, events, ACK_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any producer failure means "not stored": retryable
        log.warning("feedback not acknowledged by the broker: %s: %s", type(e).__name__, e)
        raise HTTPException(
            503,
            f"the event log did not acknowledge the write ({type(e).__name__}); retry the whole request "
            f"later (event ids make retries safe)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    return FeedbackAccepted(accepted=len(events))
