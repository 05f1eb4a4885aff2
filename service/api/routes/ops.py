"""Readiness and Prometheus metrics. (Liveness, /healthz, is in routes/health.py.)"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from core.infra.ports import any_tcp_open
from service.api.deps import State

router = APIRouter(tags=["operations"])


def _redis_ok(redis) -> bool:
    try:
        return bool(redis.ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


@router.get("/readyz", responses={503: {"description": "Not ready; the body says which check failed."}})
async def readyz(state: State) -> JSONResponse:
    """Ready: model loaded, broker and Redis reachable. Adapter and outbox state are reported
    but do not fail readiness (a failed hot-swap keeps the old version serving)."""
    backend, watcher, impressions = state.backend, state.watcher, state.impressions
    broker_up, redis_up = await asyncio.gather(
        asyncio.to_thread(any_tcp_open, state.bootstrap), asyncio.to_thread(_redis_ok, state.redis)
    )
    # Ready once the active adapter version is loaded too (the watcher exists), not on the base alone.
    model_ok = backend is not None and backend.ready and (state.registry is None or watcher is not None)
    checks = {
        "model": {
            "ok": model_ok,
            "backend": backend.kind if backend else None,
            "model": backend.model_id if backend else None,
            "detail": state.backend_error or ("" if model_ok else "loading"),
        },
        "broker": {
            "ok": broker_up,
            "bootstrap": state.bootstrap,
            "impressions_delivering": impressions.broker_ok if impressions else None,
            "last_error": impressions.last_error if impressions else "",
        },
        "redis": {"ok": redis_up},
        "adapter": {
            "serving": watcher.current_name if watcher else None,
            "pointer": watcher.pointer if watcher else None,
            "loaded": backend.loaded_adapters() if model_ok else [],
            "last_error": watcher.last_error if watcher else "",
            "trial": (
                {"candidate": watcher.trial.candidate, "share": watcher.trial.share}
                if watcher and watcher.trial
                else None
            ),
        },
        "outbox": {"pending": await asyncio.to_thread(impressions.outbox.count) if impressions else 0},
    }
    ready = model_ok and broker_up and redis_up
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(state: State) -> Response:
    """Prometheus metrics of this instance."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
