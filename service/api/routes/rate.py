"""Human rating (RLHB paper, 6.2): the /rate page and its two routes, behind a rater token.

- ``GET /rate`` serves the page (service/api/static/rate.*; no CDN, a strict CSP).
- ``GET /v1/rate/next``: a pending task of this rater, the question and "Answer 1 / Answer 2" in
  the order drawn when the task was loaded. Version names never leave the server.
- ``POST /v1/rate/{task_id}``: Quality and Satisfaction of each answer and a preference; the
  store maps them back to versions A and B.

Raters send ``X-Rater-Token`` (one of RLHB_API_RATER_TOKENS): a header, so the token is never
in a URL, a log line or the browser history. Tasks are loaded with ``rlhb eval ratings load``.
The store (core/ratings_store.py) is synchronous; it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from core.ratings_store import (
    AlreadyRated,
    Quality,
    Rating,
    RatingsError,
    RatingsStore,
    Satisfaction,
    UnknownTask,
    open_store,
    parse_rater_tokens,
)
from service.api.deps import State
from service.api.errors_doc import errors
from service.api.static_pages import page_response

log = logging.getLogger(__name__)

router = APIRouter(tags=["rating"])

RATER_HEADER = "X-Rater-Token"
TASK_ID = r"^[0-9a-f]{20}$"
RATER_TOKEN_PATTERN = r"^[!-~]{1,512}$"  # what a token can be; anything else is a 422, not a lookup
# The page loads only its own script and style (service/api/static_pages.py's CSP): an injected
# answer text cannot run code.
ASSETS = frozenset({"rate.js", "rate.css"})
_store_lock = threading.Lock()

RATE_ERRORS = errors(
    401,
    403,
    503,
    e401=f"No rater token (the {RATER_HEADER} header).",
    e403="Wrong rater token, or no raters are configured (RLHB_API_RATER_TOKENS).",
    e503="The ratings store does not answer; retry.",
)


class ShownTask(BaseModel):
    task_id: str
    question: str
    answer_1: str
    answer_2: str
    pending: int = Field(description="Tasks this rater has left, this one included.")


class NextTask(BaseModel):
    task: ShownTask | None = Field(description="None: nothing left to rate.")


class AnswerScores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: Quality = Field(description="bad / medium / good / excellent (paper 6.1, Quality Score).")
    satisfaction: Satisfaction = Field(description="unsatisfied / partially / satisfied (Satisfaction Score).")


class RatingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer_1: AnswerScores
    answer_2: AnswerScores
    preference: Literal["1", "2", "tie"] = Field(description="The better answer, or tie.")


class Stored(BaseModel):
    stored: bool = True
    pending: int


def require_rater(
    state: State,
    token: Annotated[
        str | None,
        Header(
            alias=RATER_HEADER,
            pattern=RATER_TOKEN_PATTERN,
            description="One of RLHB_API_RATER_TOKENS (1-512 printable ASCII characters, no spaces).",
        ),
    ] = None,
) -> str:
    """The rater's name; 401 without a token, 403 with a wrong one or when none are configured."""
    raters = parse_rater_tokens(state.settings.rater_tokens.get_secret_value())
    if not raters:
        raise HTTPException(403, "rating is off on this instance: no raters configured (RLHB_API_RATER_TOKENS)")
    if not token:
        raise HTTPException(401, f"rating needs the header '{RATER_HEADER}: <your rater token>'")
    # Compare against every token (no early exit), so timing does not tell how much matched.
    name = None
    for known, rater in raters.items():
        if hmac.compare_digest(token.encode(), known.encode()):
            name = rater
    if name is None:
        raise HTTPException(403, "wrong rater token")
    return name


Rater = Annotated[str, Depends(require_rater)]


def _store(request: Request) -> RatingsStore:
    """One store object per app (it remembers that the schema exists)."""
    with _store_lock:
        store = getattr(request.app.state, "ratings_store", None)
        if store is None:
            settings = request.app.state.rlhb.settings
            store = open_store(settings.ratings_store.get_secret_value(), settings.state_dir)
            request.app.state.ratings_store = store
    return store


async def _call(fn, *args):
    """Run a store call in a thread; a store that does not answer is 503, never 500."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (UnknownTask, AlreadyRated):
        raise
    except Exception as e:  # noqa: BLE001 - sqlite3/psycopg errors, unreachable server
        log.error("ratings store failed: %s", type(e).__name__ if not isinstance(e, RatingsError) else e)
        raise HTTPException(503, "the ratings store is unavailable; retry", headers={"Retry-After": "5"}) from e


@router.get("/rate", include_in_schema=False)
async def rate_page() -> Response:
    return page_response("rate.html")


@router.get("/rate/{asset}", include_in_schema=False)
async def rate_asset(asset: str) -> Response:
    return page_response(asset, ASSETS, "/rate")


@router.get("/v1/rate/next", responses=RATE_ERRORS)
async def next_task(rater: Rater, request: Request) -> NextTask:
    """A task this rater has not rated yet (None when all are done)."""
    store = _store(request)
    task = await _call(store.next_task, rater)
    if task is None:
        return NextTask(task=None)
    first, second = task.shown()
    pending = await _call(store.pending, rater)
    return NextTask(task=ShownTask(task_id=task.id, question=task.question, answer_1=first, answer_2=second,
                                   pending=pending))  # fmt: skip


@router.post(
    "/v1/rate/{task_id}",
    responses={
        **RATE_ERRORS,
        **errors(400, 404, 409, 422, e404="Unknown rating task.", e409="This rater already rated this task."),
    },
)
async def rate(
    task_id: Annotated[str, Path(pattern=TASK_ID, description="The task_id from /v1/rate/next.")],
    body: RatingBody,
    rater: Rater,
    request: Request,
) -> Stored:
    """Store this rater's scores of the task's two answers and preference."""
    store = _store(request)
    task = await _call(store.get_task, task_id)
    if task is None:
        raise HTTPException(404, f"no rating task {task_id!r}")
    rating = Rating.from_shown(
        task,
        (body.answer_1.quality, body.answer_1.satisfaction),
        (body.answer_2.quality, body.answer_2.satisfaction),
        body.preference,
    )
    try:
        await _call(store.add_rating, task_id, rater, rating)
    except UnknownTask as e:
        raise HTTPException(404, str(e)) from e
    except AlreadyRated as e:
        raise HTTPException(409, str(e)) from e
    log.info("rating stored", extra={"event": "rating_stored", "task_id": task_id, "rater": rater})
    return Stored(pending=await _call(store.pending, rater))
