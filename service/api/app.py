"""The FastAPI application factory.

``create_app(settings)`` wires everything in the lifespan: it resolves the broker and Redis
(configured, or embedded), the feedback producer (acks=all; built on demand and rebuilt
after failures, service.api.producers) and the impression signer,
the impression log with its durable outbox, the adapter registry, and starts the generation
backend in the background (``/readyz`` turns ready once the model is loaded), followed by the
adapter watcher (hot-swap). Features register routers in ``ROUTERS``.

When a configured broker or Redis is unreachable at start-up the API still starts (degraded):
answers are served, impressions wait in the outbox (bounded: RLHB_API_OUTBOX_MAX_PENDING,
then 503), feedback answers 503 until the broker is back, admin routes 503 until Redis is
back, and /readyz names what is down.

The edge of every request (service.api.edge): a request id, the body-size limit checked
before the body is read, and a generic 500 (request id, details only in the log) for
anything no handler turned into an HTTP error.

Errors: every HTTP error body is ``{"detail": "<message>", "error": {"message", "type",
"code"}}`` -- ``detail`` for plain clients, ``error`` for OpenAI clients. Validation errors
are 422 with a message naming the field; an unavailable model or engine is 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.dev_secrets import dev_impression_secret
from core.infra.kafka_security import kafka_client_options, kafka_producer_options
from core.infra.redis_url import redis_from_url
from core.settings import ApiSettings
from service.api.edge import RequestEdge, request_id
from service.api.feedback_guard import TokenBuckets
from service.api.impression_ids import ImpressionSigner, parse_old_secrets
from service.api.metrics import ApiMetrics
from service.api.routes import admin, chat, feedback, health, models, ops, query
from service.api.routes import dashboard as dashboard_routes
from service.api.routes import rate as rate_routes
from service.api.routes import status as status_routes
from service.api.state import AppState

log = logging.getLogger(__name__)
access_log = logging.getLogger("rlhb.api.access")

ROUTERS = [health.router, ops.router, query.router, chat.router, models.router, admin.router, feedback.router]
ROUTERS.append(rate_routes.router)  # the human rating page (/rate)
# GET /admin/status, the operator dashboard (/dashboard) and the admin routes it polls
ROUTERS += [status_routes.router, dashboard_routes.page, dashboard_routes.router]

OUTBOX_FILE = "impressions-outbox.sqlite3"
QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}  # logged at debug level only


def _make_producer(bootstrap: str, options: dict | None = None):
    """The feedback producer; ``options``: ``kafka_producer_options`` (security, acks="all",
    idempotence per RLHB_KAFKA_IDEMPOTENCE)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        **(options or {"acks": "all"}),
        linger_ms=2,
        retries=3,
        request_timeout_ms=5000,
        max_block_ms=5000,
        bootstrap_timeout_ms=5000,
    )


def _make_impression_producer(bootstrap: str, options: dict | None = None):
    """The impression log's own producer: short timeouts (the outbox holds what fails) and no
    idempotence, because an idempotent kafka-python producer does not recover after the
    broker restarts empty; duplicates are harmless (impressions are keyed by id)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        **(options or {"acks": "all", "enable_idempotence": False}),
        linger_ms=5,
        retries=2,
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
        device=settings.device,
        dtype=settings.dtype,
        on_batch=metrics.batch_size.observe if metrics is not None else None,
    )


def _resolve_infra(settings: ApiSettings):
    """(Infra, broker_up, redis_up). A configured broker or Redis that does not answer is not
    fatal: the API starts degraded (answers still served, impressions wait in the outbox,
    feedback and admin answer 503) and /readyz names what is down. Each is checked and
    reported on its own, so a Redis problem is never logged as a broker problem."""
    from core.infra.broker import InfraError
    from core.infra.ports import any_tcp_open
    from core.infra.redis_server import redis_answers
    from core.infra.resolve import Infra, resolve_infra

    broker_conf, redis_conf = settings.kafka_bootstrap_servers, settings.redis_url
    redis_up = not redis_conf or redis_answers(redis_conf, timeout_s=2.0)
    if not redis_up:
        log.error(
            "starting without Redis (admin routes answer 503, the served behavior is the configured one): "
            "nothing answers at the configured RLHB_REDIS_URL"
        )
    if redis_up:
        try:
            if broker_conf and not any_tcp_open(broker_conf, timeout_s=2.0):
                # Nothing listens there (connection refused): no point waiting for Kafka clients' timeouts.
                raise InfraError(f"nothing listens at {broker_conf!r}")
            return resolve_infra(settings), True, True
        except InfraError as e:
            if not broker_conf:
                raise
            log.error("starting without the broker (impressions go to the outbox): %s", e)
            # The broker failed; Redis answered above, so this resolves to the configured URL.
            return Infra(bootstrap=broker_conf, redis_url=redis_conf, owned=[]), False, True
    # Redis configured but down: resolve the broker alone (resolve_infra would fail on Redis).
    if broker_conf:
        from core.infra.broker import check_kafka, ensure_topics
        from core.infra.resolve import topics_of

        try:
            if not any_tcp_open(broker_conf, timeout_s=2.0):
                raise InfraError(f"nothing listens at {broker_conf!r}")
            check_kafka(broker_conf, options=kafka_client_options(settings))
            ensure_topics(
                broker_conf, topics_of(settings), settings.topic_partitions, options=kafka_client_options(settings)
            )
            return Infra(bootstrap=broker_conf, redis_url=redis_conf), True, False
        except InfraError as e:
            log.error("starting without the broker (impressions go to the outbox): %s", e)
            return Infra(bootstrap=broker_conf, redis_url=redis_conf), False, False
    from core.infra.broker import EmbeddedBroker, ensure_topics
    from core.infra.resolve import topics_of

    broker = EmbeddedBroker().start()
    ensure_topics(broker.bootstrap, topics_of(settings), settings.topic_partitions)
    return Infra(bootstrap=broker.bootstrap, redis_url=redis_conf, owned=[broker]), True, False


def _make_registry(settings: ApiSettings, redis_client, redis_up: bool):
    """The registry; without Redis it is built without reconciling the pointer (the watcher
    retries reading it, and serves the base model meanwhile)."""
    from core.registry import Registry

    registry = Registry(Path(settings.adapter_dir), redis_client, settings.redis_prefix, sync=False)
    if redis_up:
        try:
            registry.sync()
        except Exception as e:  # noqa: BLE001 - Redis went away since the check: the watcher retries
            log.error(
                "Redis: the adapter pointer could not be read at start-up (%s); serving the base model "
                "until it answers",
                type(e).__name__,
            )
    return registry


async def _start_generation(state: AppState, backend) -> None:
    """Load the model, then serve the active adapter version and follow the pointer."""
    from service.api.hot_swap import AdapterWatcher

    try:
        await backend.start()
    except Exception as e:  # noqa: BLE001 - reported by /readyz; generation routes answer 503
        # Clients (and /readyz, which is public) get no exception text: it can name files and hosts.
        state.backend_error = f"the generation backend failed to start ({type(e).__name__}; see the server log)"
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

        from core.infra.ports import any_tcp_open
        from service.api.outbox import ImpressionLog, Outbox
        from service.api.producers import LazyProducer

        infra, broker_up, redis_up = await asyncio.to_thread(_resolve_infra, settings)
        # Empty only in dev mode (settings refuse it otherwise): a random per-install key kept in
        # the data folder, never a constant everyone can read in the source (core/dev_secrets.py).
        secret = settings.impression_secret.get_secret_value() or dev_impression_secret(settings.state_dir)
        producer_options = kafka_producer_options(settings)
        producers = LazyProducer(
            infra.bootstrap, lambda bootstrap: _make_producer(bootstrap, producer_options), probe=any_tcp_open
        )
        if broker_up:
            with contextlib.suppress(Exception):  # reported by /readyz; built again on the first feedback
                await asyncio.to_thread(producers.get)
        state = AppState(
            settings=settings,
            signer=ImpressionSigner(
                secret,
                key_id=settings.impression_key_id,
                old_secrets=parse_old_secrets(settings.impression_old_secrets.get_secret_value()),
                ttl_s=settings.impression_ttl_s,
                accept_legacy=settings.impression_accept_legacy,
            ),
            # Bounded and blocking (issue 16): under load requests wait briefly for a connection
            # instead of each burst leaving more sockets open for the life of the process.
            redis=redis_from_url(
                infra.redis_url,
                max_connections=settings.redis_max_connections,
                pool_timeout_s=settings.redis_pool_timeout_s,
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=3,
            ),
            producers=producers,
            bootstrap=infra.bootstrap,
            redis_url=infra.redis_url,
        )
        state.metrics = metrics
        state.feedback_buckets = TokenBuckets(settings.feedback_rate_per_s, settings.feedback_burst)
        state.default_behavior = await asyncio.to_thread(default_behavior, settings, state.redis if redis_up else None)
        state.registry = registry or await asyncio.to_thread(_make_registry, settings, state.redis, redis_up)
        outbox = Outbox(Path(settings.state_dir) / OUTBOX_FILE)
        state.impressions = ImpressionLog(
            outbox,
            settings.topic_impressions,
            lambda: _make_impression_producer(infra.bootstrap, kafka_producer_options(settings, idempotent=False)),
            metrics=metrics,
            flush_interval_s=settings.outbox_flush_s,
            max_pending=settings.outbox_max_pending,
        )
        state.impressions.start()
        app.state.rlhb = state
        startup: asyncio.Task | None = None
        if settings.serve_model:
            try:
                state.backend = backend or make_backend(settings, metrics)
            except ValueError as e:  # no model folder: say so in /readyz instead of crashing
                state.backend_error = "no generation backend (misconfigured model; see the server log)"
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
            await asyncio.to_thread(state.producers.close, 2.0)
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
    app.add_middleware(RequestEdge, max_body_bytes=settings.max_body_bytes)  # outermost: added last
    app.openapi = functools.partial(_openapi, app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the schemas of bodies a route parses itself (/v1/feedback)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(feedback.BODY_COMPONENTS)
        _error_body_for_422(doc)
        app.openapi_schema = doc
    return app.openapi_schema


def _error_body_for_422(doc: dict) -> None:
    """FastAPI documents the 422 of a route with parameters that declares none as its default
    ``HTTPValidationError`` (``detail``: a list), but ``invalid_request`` answers every 422 with
    the common error body (``detail``: one message); document what is sent (schemathesis found it)."""
    from service.api.errors_doc import MEANING

    ours = {"$ref": "#/components/schemas/ErrorBody"}
    for operation in (op for path in doc.get("paths", {}).values() for op in path.values()):
        answer = operation.get("responses", {}).get("422")
        content = (answer or {}).get("content", {}).get("application/json", {})
        if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
            operation["responses"]["422"] = {
                "description": MEANING[422],
                "content": {"application/json": {"schema": ours}},
            }
    schemas = doc.get("components", {}).get("schemas", {})  # ErrorBody is there: every route declares errors()
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


# --------------------------------------------------------------------------- errors
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
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


REDIS_RETRY_AFTER_S = 5


def install_error_handlers(app: FastAPI) -> None:
    from redis.exceptions import RedisError

    from service.api.backends.base import BackendError
    from service.api.outbox import OutboxUnwritable

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
        # The message can carry an exception's text (paths, hosts): the log gets it, the client the id.
        log.warning("generation unavailable: %s", exc, extra={"event": "backend_error"})
        return JSONResponse(
            error_body(503, f"generation unavailable right now (request id {request_id()}); retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(OutboxUnwritable)
    async def outbox_unwritable(request: Request, exc: OutboxUnwritable) -> JSONResponse:
        # The answer is not served: its impression could not be made durable (service.api.outbox).
        return JSONResponse(
            error_body(
                503,
                "the impression log cannot be written right now (the disk under the outbox is full or failing); "
                "retry later (see /readyz)",
            ),
            status_code=503,
            headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
        )

    @app.exception_handler(RedisError)
    async def redis_unavailable(request: Request, exc: RedisError) -> JSONResponse:
        # Admin state (registry pointer, train queue) lives in Redis; without it these routes cannot
        # answer, which is a 503 to retry, not a 500.
        log.warning("Redis unavailable: %s: %s", type(exc).__name__, exc, extra={"event": "redis_error"})
        return JSONResponse(
            error_body(503, "Redis (the shared state store) is unreachable right now; retry later (see /readyz)"),
            status_code=503,
            headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
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
