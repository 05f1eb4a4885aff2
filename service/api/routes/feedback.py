"""POST /v1/feedback: user reactions to served answers, written to the ``feedback`` topic.

Body: one FeedbackEvent, or ``{"events": [...]}`` with 1..FEEDBACK_BATCH_LIMIT events, and
the ``X-Client-Id`` header the answer came with. Every impression id must carry this server's
signature, be unexpired and be bound to that client key; each count kind is recorded once per
(impression, client) under an event id the server derives, and clients are rate-limited
(service.api.feedback_guard, which also says what the admin token changes). The answer is 202
(``accepted``: written now, ``duplicates``: already recorded, not written again) only after the
broker acknowledged every write (the producer uses acks=all); when it cannot (unreachable,
timeout) the answer is 503 with Retry-After and the client retries the whole request -- the
aggregator dedupes by event_id, so a retry never double-counts.

Errors (never 500): 400 body is not JSON (or nests too deeply for the parser); 403 an id was
issued to another client (X-Client-Id missing or different); 410 an id expired; 413 batch
over the limit or body too large; 422 a field is invalid (unknown kind, negative or
non-finite value...) or an impression id is malformed or not issued here -- the message
names the field, e.g. ``events[3].kind``; 429 over the client's rate (Retry-After); 503 the
broker is unreachable or did not acknowledge (the producer is rebuilt on demand with
backoff, service.api.producers).

The body is parsed here rather than by FastAPI so that a batch over the limit is a 413
before 1000+ events are validated; the OpenAPI schema still declares it (``BODY_SCHEMA``).
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
from service.api.deps import ClientKey, IsAdmin, State
from service.api.errors_doc import errors
from service.api.feedback_guard import confirm_once, first_only, release_once, retry_after, server_event
from service.api.producers import BrokerUnavailable

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
    except RecursionError:  # e.g. 100,000 nested brackets: no feedback event nests more than 3 levels
        raise HTTPException(400, "body is not acceptable JSON: it nests too deeply") from None
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


def check_ids(events: list[FeedbackEvent], ids, client_key: str | None) -> list[float]:
    """Each event's id checked (signature, key, expiry; the binding unless ``client_key`` is
    None); returns each id's remaining lifetime in seconds, or HTTPException naming the event."""
    now, left = time.time(), []
    for i, ev in enumerate(events):
        facts, problem = ids.check(ev.impression_id, client_key, now)
        if problem is not None:
            where = f"events[{i}].impression_id" if len(events) > 1 else "impression_id"
            raise HTTPException(problem.status, f"{where}: {problem.reason}")
        left.append(facts.expires_at - now if facts.expires_at is not None else ids.ttl_s)
    return left


def produce_and_wait(producer, topic: str, events: list[FeedbackEvent], timeout_s: float) -> None:
    """Send every event (key = impression id) and block until the broker acknowledged all."""
    futures = [
        producer.send(topic, key=ev.impression_id.encode(), value=ev.model_dump_json().encode()) for ev in events
    ]
    deadline = time.monotonic() + timeout_s
    producer.flush(timeout=timeout_s)
    for fut in futures:
        fut.get(timeout=max(0.01, deadline - time.monotonic()))


def _components() -> tuple[dict, dict]:
    """The body's OpenAPI schema (one event or a batch) and the component schemas it refers to."""
    from pydantic.json_schema import models_json_schema

    refs, top = models_json_schema(
        [(FeedbackEvent, "validation"), (FeedbackBatch, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schema = {"anyOf": [refs[(FeedbackEvent, "validation")], refs[(FeedbackBatch, "validation")]]}
    return schema, top.get("$defs", {})


BODY_SCHEMA, BODY_COMPONENTS = _components()
"""Merged into the app's OpenAPI document by service.api.app (FastAPI only lists models it parses)."""


def _send(state, events: list[FeedbackEvent]) -> None:
    producer = state.producers.get()  # BrokerUnavailable while the broker is away (backoff)
    try:
        produce_and_wait(producer, state.settings.topic_feedback, events, ACK_TIMEOUT_S)
    except Exception:
        state.producers.broken(producer)  # a fresh producer next time: old ones may never recover
        raise


@router.post(
    "/v1/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    responses=errors(
        400,
        403,
        410,
        422,
        429,
        503,
        e403="An impression id was issued to another client: send the X-Client-Id the answer came with.",
        e413="The body or the batch is over its limit.",
    ),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}},
)
async def post_feedback(request: Request, state: State, admin: IsAdmin, client_key: ClientKey) -> FeedbackAccepted:
    """Record user reactions (one event or a batch) to answers this client was given; 202 once
    the broker holds them."""
    events = parse_events(await request.body())
    if admin:  # a trusted relay (service.api.feedback_guard): ids checked, events as sent
        check_ids(events, state.signer, None)
        return FeedbackAccepted(accepted=await _write(state, events))
    client = client_key or ""
    wait = state.feedback_buckets.take(client or f"addr:{request.client.host if request.client else ''}", len(events))
    if wait > 0:
        raise HTTPException(
            429,
            f"too much feedback from this client: at most {state.settings.feedback_rate_per_s:g} events per second "
            f"(bursts of {state.settings.feedback_burst}); retry after the Retry-After seconds",
            headers={"Retry-After": retry_after(wait)},
        )
    lifetimes = check_ids(events, state.signer, client)
    redis, prefix = state.redis, state.settings.redis_prefix
    fresh, claimed = await run_in_threadpool(first_only, redis, prefix, [server_event(ev) for ev in events], lifetimes)
    try:
        written = await _write(state, fresh)
    except HTTPException:
        await run_in_threadpool(release_once, redis, prefix, claimed)  # so that the retry is not a "duplicate"
        raise
    await run_in_threadpool(confirm_once, redis, prefix, claimed)  # only now are they "written"
    return FeedbackAccepted(accepted=written, duplicates=len(events) - len(fresh))


async def _write(state, events: list[FeedbackEvent]) -> int:
    """Write ``events`` and wait for the broker (how many); 503 (retryable) when it does not take them."""
    if not events:
        return 0
    try:
        await run_in_threadpool(_send, state, events)
    except BrokerUnavailable as e:
        log.warning("feedback refused: %s", e)
        raise HTTPException(
            503,
            "the event log (Kafka broker) is unreachable right now; retry the whole request later "
            "(event ids make retries safe)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    except Exception as e:  # noqa: BLE001 - any producer failure means "not stored": retryable
        log.warning("feedback not acknowledged by the broker: %s: %s", type(e).__name__, e)
        raise HTTPException(
            503,
            f"the event log did not acknowledge the write ({type(e).__name__}); retry the whole request "
            f"later (event ids make retries safe)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    return len(events)
