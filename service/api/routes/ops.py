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


@router.get("/readyz", responses={503: {"description": "Not ready; ``down`` names the dependencies that failed."}})
async def readyz(state: State) -> JSONResponse:
    """Ready: model loaded, broker reachable and writable (the feedback producer exists and the
    impression log delivers), Redis answering. ``down`` lists what is not, by name (model,
    broker, redis). Adapter and outbox state are reported but do not fail readiness (a failed
    hot-swap keeps the old version serving) -- except a full outbox, or one whose disk refuses
    writes, which refuses answers."""
    backend, watcher, impressions, producers = state.backend, state.watcher, state.impressions, state.producers
    broker_open, redis_up = await asyncio.gather(
        asyncio.to_thread(any_tcp_open, state.bootstrap), asyncio.to_thread(_redis_ok, state.redis)
    )
    if broker_open and not producers.ready:
        producers.connect_soon()  # the broker is back: build the feedback producer now, not on the next feedback
    delivering = impressions.broker_ok if impressions else True
    broker_up = broker_open and producers.ready and delivering
    # Ready once the active adapter version is loaded too (the watcher exists), not on the base alone.
    model_ok = backend is not None and backend.ready and (state.registry is None or watcher is not None)
    pending = await asyncio.to_thread(impressions.outbox.count) if impressions else 0
    outbox_full = impressions is not None and impressions.full
    write_error = impressions.write_error if impressions is not None else ""
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
            "reachable": broker_open,
            "feedback_producer": producers.ready,
            "impressions_delivering": delivering,
            "detail": "" if broker_up else _broker_detail(broker_open, producers.ready, delivering),
        },
        "redis": {"ok": redis_up, "detail": "" if redis_up else "Redis does not answer (admin routes answer 503)"},
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
        "outbox": {
            "ok": not outbox_full and not write_error,
            "pending": pending,
            "max_pending": state.settings.outbox_max_pending,
            "detail": f"cannot write to the disk under the outbox: {write_error}" if write_error else "",
        },
    }
    down = [name for name in ("model", "broker", "redis", "outbox") if not checks[name]["ok"]]
    return JSONResponse(
        {"status": "not ready" if down else "ready", "down": down, "checks": checks},
        status_code=503 if down else 200,
    )


def _broker_detail(reachable: bool, producer: bool, delivering: bool) -> str:
    if not reachable:
        return "nothing accepts connections at the bootstrap address"
    if not producer:
        return "reachable again; the feedback producer is (re)connecting"
    return "impression writes are failing; they wait in the outbox" if not delivering else ""


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(state: State) -> Response:
    """Prometheus metrics of this instance."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
