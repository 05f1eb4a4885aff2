"""The FastAPI application factory.

``create_app(settings)`` wires everything in the lifespan: it resolves the broker and Redis
(configured, or embedded), builds the Kafka producer (acks=all) and the impression signer,
the impression log with its durable outbox, the adapter registry, and starts the generation
backend in the background (``/readyz`` turns ready once the model is loaded), followed by the
adapter watcher (hot-swap). Features register routers in ``ROUTERS``.

When a configured broker is unreachable at start-up the API still starts (degraded):
answers are served, impressions wait in the outbox, /readyz says the broker is down.

Errors: every HTTP error body is ``{"detail": "<message>", "error": {"message", "type",
"code"}}`` -- ``detail`` for plain clients, ``error`` for OpenAI clients. Validation errors
are 422 with a message naming the field; an unavailable model or engine is 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.settings import ApiSettings
from service.api.impression_ids import ImpressionSigner
from service.api.metrics import ApiMetrics
from service.api.routes import admin, chat, feedback, health, models, ops, query
from service.api.state import AppState

log = logging.getLogger(__name__)
access_log = logging.getLogger("rlhb.api.access")

ROUTERS = [health.router, ops.router, query.router, chat.router, models.router, admin.router, feedback.router]

OUTBOX_FILE = "impressions-outbox.sqlite3"
QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}  # logged at debug level only


def _make_producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=2,
        retries=3,
        request_timeout_ms=5000,
        max_block_ms=5000,
        bootstrap_timeout_ms=5000,
    )


def _make_impression_producer(bootstrap: str):
    """The impression log's own producer: short timeouts (the outbox holds what fails) and no
    idempotence, because an idempotent kafka-python producer does not recover after the
    broker restarts empty; duplicates are harmless (impressions are keyed by id)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        retries=2,
        enable_idempotence=False,
        request_timeout_ms=3000,
        delivery_timeout_ms=8000,
        max_block_ms=3000,
        bootstrap_timeout_ms=3000,
    )


def default_behavior(settings: ApiSettings, redis=None) -> str:
    """The most preferred behavior sentence of the encoding the aggregator stored in Redis
    (its rates, levels and fitted edges), the same function the trainer trains toward;
    ``settings.behavior_encoding`` only when none is stored yet or Redis does not answer."""
    from core.behavior.encoding import make_encoding, most_preferred_sentence
    from core.behavior.encoding_store import load_encoding

    configured = make_encoding(settings.behavior_encoding)
    if redis is None:
        return most_preferred_sentence(configured)
    try:
        return most_preferred_sentence(load_encoding(redis, settings.redis_prefix, default=configured))
    except Exception as e:  # Redis down or a foreign value: serve the configured sentence, say why
        log.warning("behavior encoding not readable from Redis (%s); serving the configured one", e)
        return most_preferred_sentence(configured)


ENCODING_REFRESH_S = 10.0
"""How often the API re-reads the stored encoding (the aggregator may start later or refit)."""


async def _follow_encoding(state: AppState, settings: ApiSettings) -> None:
    while True:
        await asyncio.sleep(ENCODING_REFRESH_S)
        state.default_behavior = await asyncio.to_thread(default_behavior, settings, state.redis)


def make_backend(settings: ApiSettings, metrics: ApiMetrics | None = None):
    if settings.backend == "vllm":
        from service.api.backends.vllm import VllmBackend

        return VllmBackend(settings)
    from service.api.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(
        settings.resolved_model_path(),
        batch_window_ms=settings.batch_window_ms,
        max_batch_size=settings.max_batch_size,
        max_loaded_adapters=settings.max_loaded_adapters,
        torch_threads=settings.torch_threads,
        prefix_cache=settings.prefix_cache,
        on_batch=metrics.batch_size.observe if metrics is not None else None,
    )


def _resolve_infra(settings: ApiSettings):
    from core.infra.broker import InfraError
    from core.infra.ports import any_tcp_open
    from core.infra.redis_server import resolve_redis_url
    from core.infra.resolve import Infra, resolve_infra

    configured = settings.kafka_bootstrap_servers
    try:
        if configured and not any_tcp_open(configured, timeout_s=2.0):
            # Nothing listens there (connection refused): no point waiting for Kafka clients' timeouts.
            raise InfraError(f"nothing listens at {configured!r}")
        return resolve_infra(settings), True
    except InfraError as e:
        if not configured:
            raise
        log.error("starting without the broker (impressions go to the outbox): %s", e)
        redis_url, server = resolve_redis_url(settings.redis_url)
        return Infra(
            bootstrap=settings.kafka_bootstrap_servers,
            redis_url=redis_url,
            owned=[server] if server is not None else [],
        ), False


async def _start_generation(state: AppState, backend) -> None:
    """Load the model, then serve the active adapter version and follow the pointer."""
    from service.api.hot_swap import AdapterWatcher

    try:
        await backend.start()
    except Exception as e:  # noqa: BLE001 - reported by /readyz; generation routes answer 503
        state.backend_error = f"{type(e).__name__}: {e}"
        log.exception("the generation backend failed to start")
        return
    if state.registry is not None:
        watcher = AdapterWatcher(backend, state.registry, state.metrics, poll_s=state.settings.adapter_poll_s)
        await watcher.start()
        state.watcher = watcher
    log.info("ready to generate", extra={"event": "backend_ready", "backend": backend.kind, "model": backend.model_id})


def create_app(settings: ApiSettings | None = None, *, backend=None, registry=None) -> FastAPI:
    """``backend`` / ``registry``: use these instead of building them from ``settings``."""
    settings = settings or ApiSettings()
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import redis

        from core.registry import Registry
        from service.api.outbox import ImpressionLog, Outbox

        infra, broker_up = await asyncio.to_thread(_resolve_infra, settings)
        secret = settings.impression_secret or "dev-only-impression-secret"
        producer = None
        if broker_up:
            producer = await asyncio.to_thread(_make_producer, infra.bootstrap)
        state = AppState(
            settings=settings,
            signer=ImpressionSigner(secret),
            redis=redis.Redis.from_url(
                infra.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3
            ),
            producer=producer,
            bootstrap=infra.bootstrap,
            redis_url=infra.redis_url,
        )
        state.metrics = metrics
        state.default_behavior = await asyncio.to_thread(default_behavior, settings, state.redis)
        state.registry = registry or await asyncio.to_thread(
            Registry, Path(settings.adapter_dir), state.redis, settings.redis_prefix
        )
        outbox = Outbox(Path(settings.state_dir) / OUTBOX_FILE)
        state.impressions = ImpressionLog(
            outbox,
            settings.topic_impressions,
            lambda: _make_impression_producer(infra.bootstrap),
            metrics=metrics,
            flush_interval_s=settings.outbox_flush_s,
        )
        state.impressions.start()
        app.state.rlhb = state
        startup: asyncio.Task | None = None
        if settings.serve_model:
            try:
                state.backend = backend or make_backend(settings, metrics)
            except ValueError as e:  # no model folder: say so in /readyz instead of crashing
                state.backend_error = str(e)
                log.error("no generation backend: %s", e)
            if state.backend is not None:
                startup = asyncio.get_running_loop().create_task(_start_generation(state, state.backend))
        behavior_refresh = asyncio.get_running_loop().create_task(_follow_encoding(state, settings))
        try:
            yield
        finally:
            for task in (startup, behavior_refresh):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            if state.watcher is not None:
                await state.watcher.close()
            if state.backend is not None:
                with contextlib.suppress(Exception):
                    await state.backend.close()
            await state.impressions.close()
            outbox.close()
            if state.producer is not None:
                with contextlib.suppress(Exception):
                    state.producer.flush(3)
                with contextlib.suppress(Exception):
                    state.producer.close(2)
            state.redis.close()
            infra.stop()

    app = FastAPI(
        title="rlhb",
        version="0.1.0",
        lifespan=lifespan,
        description=(
            "Online continual alignment from user behavior (RLHB).\n\n"
            "- `POST /v1/query`: an answer conditioned on a behavior sentence, with a signed impression id.\n"
            "- `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible; `model` is an adapter version, "
            "`rlhb-latest` or `base`.\n"
            "- `POST /v1/feedback`: user reactions to answers.\n"
            "- `/admin/*` (bearer admin token): checkpoints, promote, rollback, train.\n"
            "- `/healthz`, `/readyz`, `/metrics` (Prometheus)."
        ),
    )
    app.state.metrics = metrics
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


# --------------------------------------------------------------------------- errors
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}


def error_body(status: int, message: str) -> dict:
    return {
        "detail": message,
        "error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "code": status},
    }


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validation_message(errors) -> str:
    return "; ".join(f"{_loc(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    from service.api.backends.base import BackendError

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, validation_message(exc.errors())), status_code=422)

    @app.exception_handler(BackendError)
    async def backend_unavailable(request: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(
            error_body(503, f"generation unavailable: {exc}; retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )


# --------------------------------------------------------------------------- metrics + access log
class RequestMetrics:
    """ASGI middleware: latency histogram per route template and one JSON log line per request."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict = {"status": 500, "headers": {}}

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["headers"] = {
                    k.decode().lower(): v.decode()
                    for k, v in message.get("headers", [])
                    if k.lower() in (b"x-impression-id", b"x-adapter-version")
                }
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            status = seen["status"]
            self.metrics.request_latency.labels(template, scope["method"], str(status)).observe(elapsed)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS and status < 400 else logging.INFO
            access_log.log(
                level,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "event": "http_request",
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "impression_id": seen["headers"].get("x-impression-id"),
                    "adapter_version": seen["headers"].get("x-adapter-version"),
                },
            )
