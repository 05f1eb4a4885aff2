"""Liveness. (Readiness and metrics live with the serving feature.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP. Says nothing about dependencies (see /readyz)."""
    return {"status": "ok"}
