"""One answer, shared by /v1/query and /v1/chat/completions: validate, pick and pin the
adapter version, render the prompt (core.prompts.render_prompt, the same function the
trainer uses), generate, then log the impression and count it.

A ``Turn`` pins its version from ``start_turn`` to ``end_turn``: a hot-swap in between
changes what new turns get, never this one, and the response names this turn's version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from core.prompts import render_prompt
from schemas.adapters import BASE_VERSION, AdapterStatus, AdapterVersion
from schemas.impression import Impression
from schemas.openai import LATEST_ALIAS
from service.api.backends.base import Cancellation, GenerationRequest, GenerationResult
from service.api.edge import request_id
from service.api.state import AppState

log = logging.getLogger(__name__)
LATEST_ALIASES = {LATEST_ALIAS, "latest", "default"}
_SENTINEL = "\x00rlhb-query\x00"
_background: set[asyncio.Task] = set()  # impressions logged after a client left (keep a reference)


@dataclass
class Turn:
    impression_id: str
    client_key: str
    """The key the impression id is bound to (sent by the client, or issued): feedback sends it back."""
    query: str
    behavior: str
    request: GenerationRequest
    cancel: Cancellation = field(default_factory=Cancellation)
    started: float = field(default_factory=time.perf_counter)
    released: bool = False
    arm: str | None = None
    """The A/B trial arm that answers ("active" | "candidate"), None outside a trial."""
    trial: str | None = None
    """The A/B trial (its candidate's name) when ``arm`` is set."""
    shown: str = ""
    """Streaming: the text sent to the client so far (logged if it leaves early)."""
    recorded: bool = False
    """The impression was handed to the log (``record``): never log one id twice."""

    @property
    def version(self) -> AdapterVersion | None:
        return self.request.adapter

    @property
    def version_name(self) -> str:
        return self.request.version_name


def backend_or_503(state: AppState):
    backend = state.backend
    if backend is None or not backend.ready:
        detail = state.backend_error or "the model is still loading"
    elif state.registry is not None and state.watcher is None:
        # Until the watcher has loaded the active version, an answer would come from the base
        # model (labelled "base") although a version is active.
        detail = "the active adapter version is still loading"
    else:
        return backend
    raise HTTPException(
        503, f"not ready to generate: {detail}; retry shortly (see /readyz)", headers={"Retry-After": "2"}
    )


def outbox_or_503(state: AppState) -> None:
    """Refuse a new answer while the impression outbox is full (bounded during a broker outage;
    see service.api.outbox): an answer whose impression cannot be logged is not served."""
    if state.impressions is not None and state.impressions.full:
        raise HTTPException(
            503,
            f"the impression log is full ({state.impressions.max_pending} answers wait for the event log, "
            "which is unreachable); retry later",
            headers={"Retry-After": "10"},
        )


async def resolve_version(state: AppState, model: str | None, admin: bool = False) -> AdapterVersion | None:
    """``model`` -> the version to use (None: base). 404 unknown, 403 not open to this client,
    409 rejected or unloadable."""
    return (await resolve_arm(state, model, "", admin))[0]


async def resolve_arm(
    state: AppState, model: str | None, impression_id: str, admin: bool = False
) -> tuple[AdapterVersion | None, str | None, str | None]:
    """``resolve_version`` plus the A/B arm: a default request (``model`` unset or latest) during
    a trial goes to the arm ``impression_id`` hashes to; returns (version, arm, trial)."""
    backend = backend_or_503(state)
    if model is None or model in LATEST_ALIASES:
        return state.watcher.pick(impression_id) if state.watcher is not None else (None, None, None)
    return await _named_version(state, backend, model, admin), None, None


def _open_to_everyone(state: AppState, model: str) -> bool:
    """Versions any client may name: what is served anyway (the active version and a live A/B
    arm), so naming them loads nothing and evicts nothing."""
    watcher = state.watcher
    if watcher is None:
        return False
    return model == watcher.current_name or (watcher.trial is not None and model == watcher.trial.candidate)


async def _named_version(state: AppState, backend, model: str, admin: bool) -> AdapterVersion | None:
    if model == BASE_VERSION or model == backend.model_id:
        return None
    if state.registry is None:
        raise HTTPException(404, f"unknown model {model!r}: this server has no adapter registry")
    try:
        version = await asyncio.to_thread(state.registry.get, model)
    except KeyError:
        raise HTTPException(
            404,
            f"unknown model {model!r}: use '{LATEST_ALIAS}', '{BASE_VERSION}' or a version listed by GET /v1/models",
        ) from None
    if not admin and not _open_to_everyone(state, model):
        # Naming a version loads it (and may evict another): only admins may make the server do that.
        raise HTTPException(
            403,
            f"version {model!r} is not served to clients: name '{LATEST_ALIAS}', '{BASE_VERSION}' or the active "
            "version; other versions need the admin token (Authorization: Bearer, the OpenAI client's api_key)",
        )
    if version.status == AdapterStatus.rejected:
        raise HTTPException(
            409, f"version {model!r} was rejected ({version.reason or 'no reason recorded'}) and is not served"
        )
    if model not in backend.loaded_adapters():
        try:
            version = await asyncio.to_thread(state.registry.validate, model)
            await backend.load_adapter(version)
        except Exception as e:  # noqa: BLE001 - any failure to load: the client asked for something unservable
            log.warning("version %s cannot be loaded: %s: %s", model, type(e).__name__, e)
            raise HTTPException(
                409, f"version {model!r} cannot be loaded (request id {request_id()}; details in the server log)"
            ) from None
    return version


async def start_turn(
    state: AppState,
    *,
    query: str,
    behavior: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    model: str | None,
    admin: bool = False,
    client_key: str | None = None,
) -> Turn:
    """Validate a request and pin its version; the caller must ``end_turn`` it. ``admin``: the
    request carries the admin token (it may name any registered version). ``client_key``: the
    client's ``X-Client-Id``; None: issue one (the answer sends it back in that header)."""
    settings = state.settings
    if not query.strip():
        raise HTTPException(422, "query is empty: send the question as non-blank text")
    if max_tokens is not None and max_tokens > settings.max_tokens_cap:
        raise HTTPException(
            422,
            f"max_tokens={max_tokens} exceeds this server's cap of {settings.max_tokens_cap} "
            "(RLHB_API_MAX_TOKENS_CAP); ask for fewer tokens",
        )
    max_new = max_tokens or settings.max_new_tokens
    behavior = behavior.strip() if behavior and behavior.strip() else state.default_behavior
    backend = backend_or_503(state)
    outbox_or_503(state)
    prompt = render_prompt(backend.tokenizer, query, behavior)
    prefix = shared_prefix(backend.tokenizer, behavior)
    prompt_tokens = backend.count_tokens(prompt)
    if prompt_tokens + max_new > backend.max_context:
        raise HTTPException(
            422,
            f"query too long: the prompt is {prompt_tokens} tokens and max_tokens is {max_new}, "
            f"more than the model's context of {backend.max_context} tokens; shorten the query",
        )
    client_key = client_key or secrets.token_urlsafe(16)
    impression_id = state.signer.issue(client_key)
    for _ in range(3):  # the version may be evicted between resolving and pinning: resolve again
        version, arm, trial = await resolve_arm(state, model, impression_id, admin)
        if backend.acquire(version):
            break
    else:
        raise HTTPException(503, f"version {model!r} keeps being evicted; retry", headers={"Retry-After": "1"})
    request = GenerationRequest(
        prompt=prompt,
        max_new_tokens=max_new,
        temperature=settings.temperature if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        adapter=version,
        prefix=prefix if prompt.startswith(prefix) else "",
    )
    return Turn(
        impression_id=impression_id,
        client_key=client_key,
        query=query,
        behavior=behavior,
        request=request,
        arm=arm,
        trial=trial,
    )


@functools.lru_cache(maxsize=256)
def shared_prefix(tokenizer, behavior: str) -> str:
    """The part of every prompt with this behavior that comes before the query (chat template +
    system message), found by rendering a sentinel query; backends cache its keys/values."""
    rendered = render_prompt(tokenizer, _SENTINEL, behavior)
    return rendered.split(_SENTINEL)[0] if rendered.count(_SENTINEL) == 1 else ""


def end_turn(state: AppState, turn: Turn) -> None:
    if not turn.released:
        turn.released = True
        state.backend.release(turn.version)


async def record(
    state: AppState, turn: Turn, result: GenerationResult, endpoint: str, *, aborted: bool = False
) -> None:
    """Log the impression (durably, see service.api.outbox) and count the answer."""
    impression = Impression(
        impression_id=turn.impression_id,
        query=turn.query,
        behavior=turn.behavior,
        response=result.text,
        adapter_version=result.adapter_version,
        model=state.backend.model_id,
        arm=turn.arm,
        trial=turn.trial,
        aborted=aborted,
    )
    turn.recorded = True  # before the first await: a caller cancelled from here on must not log it again
    if state.metrics is not None:
        state.metrics.generated_tokens.labels(result.adapter_version).inc(result.completion_tokens)
        state.metrics.generations.labels(endpoint, result.finish_reason).inc()
    if state.impressions is not None:
        await state.impressions.log(impression)


def record_later(state: AppState, turn: Turn, result: GenerationResult, endpoint: str, aborted: bool) -> None:
    """``record`` from a context that is being cancelled (a streaming client left)."""
    turn.recorded = True
    task = asyncio.get_running_loop().create_task(record(state, turn, result, endpoint, aborted=aborted))
    _background.add(task)
    task.add_done_callback(_background.discard)


def abandon(state: AppState, turn: Turn, endpoint: str) -> None:
    """A stream ended without its impression logged (the client left, even before the first
    token, or generation failed): release the version and log what the client was shown,
    flagged ``aborted``. The client already holds the id (stream headers), and an id without
    its impression would make its feedback wait in the aggregator's pending store until it
    expires, crowding out legitimate early feedback. Idempotent; safe while being cancelled."""
    end_turn(state, turn)
    if turn.recorded:
        return
    result = GenerationResult(
        text=turn.shown,
        prompt_tokens=0,
        completion_tokens=0,
        finish_reason="cancelled",
        adapter_version=turn.version_name,
    )
    record_later(state, turn, result, endpoint, aborted=True)


class TurnStream(StreamingResponse):
    """A streamed answer that logs its impression however the response ends. The generator's
    own ``finally`` does not suffice: when the client leaves before the body's first chunk is
    pulled, Starlette never starts the generator (so its ``finally`` never runs), and a
    generator suspended at a ``yield`` is only closed whenever it is garbage-collected."""

    def __init__(self, content, state: AppState, turn: Turn, endpoint: str, headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        self._close = functools.partial(abandon, state, turn, endpoint)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()
