"""The FastAPI application factory.

``create_app(settings)`` wires infrastructure in the lifespan: it resolves the broker and
Redis (configured, or embedded), builds the Kafka producer (acks=all) and the impression
signer, and includes the routers. Features register routers in ``ROUTERS``.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

from rlhb.settings import ApiSettings
from service.api.impression_ids import ImpressionSigner
from service.api.routes import feedback, health
from service.api.state import AppState

log = logging.getLogger(__name__)

ROUTERS = [health.router, feedback.router]


def _make_producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, retries=3,
        request_timeout_ms=5000, max_block_ms=5000,
    )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import redis

        from rlhb.infra.resolve import resolve_infra

        infra = resolve_infra(settings)
        secret = settings.impression_secret or "dev-only-impression-secret"
        state = AppState(
            settings=settings, signer=ImpressionSigner(secret),
            redis=redis.Redis.from_url(infra.redis_url, decode_responses=True),
            producer=_make_producer(infra.bootstrap), bootstrap=infra.bootstrap, redis_url=infra.redis_url,
        )
        app.state.rlhb = state
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                state.producer.flush(5)
                state.producer.close(5)
            state.redis.close()
            infra.stop()

    app = FastAPI(title="rlhb", version="0.1.0", lifespan=lifespan,
                  description="Online continual alignment from user behavior (RLHB).")
    for router in ROUTERS:
        app.include_router(router)
    return app
