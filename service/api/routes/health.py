"""Liveness. (Readiness and metrics live with the serving feature.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP. Says nothing about dependencies (see /readyz).

    ``async`` on purpose: a sync route runs on the shared thread pool, where it queued behind
    feedback requests waiting on a dead broker, and the orchestrator restarted a live process."""
    return {"status": "ok"}
