"""``GET /admin/status``: every process of the deployment in one answer (admin token).

The API reports itself; the aggregator members and the trainer report what they last wrote to
Redis (``core.process_status``: each writes every few seconds with a TTL, so a process that
stopped writing reads as ``down``). The trainer's line says what it does in words: ``idle``,
``training round N step k of M (ETA ~s)``, ``gating round N``; plus its last error. The recent
rounds come from the trainer's ``train:rounds`` list (when, why, records, outcome, seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from core.process_status import read_status
from schemas.adapters import BASE_VERSION
from service.api.deps import Admin, State
from service.api.errors_doc import errors

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Admin],
    responses=errors(401, 403, 503, e503="Redis (where the processes write their status) is unreachable; retry."),
)

ROUNDS_SHOWN = 20
ROUND_FIELDS = (
    "round",
    "algorithm",
    "started_at",
    "finished_at",
    "reason_for_round",
    "records",
    "train_records",
    "heldout_records",
    "outcome",
    "reason",
    "seconds",
    "train_seconds",
    "version",
    "parent",
)


class ProcessStatus(BaseModel):
    state: str = Field(description="up | down (no member wrote within 3 status periods).")
    summary: str = Field(description="One line for people.")
    members: list[dict[str, Any]] = Field(default_factory=list, description="What each member last wrote.")


class DeploymentStatus(BaseModel):
    active: str = Field(description="The registry's active version.")
    trial: dict[str, Any] | None = Field(default=None, description="The running A/B trial, if any.")
    api: dict[str, Any]
    aggregator: ProcessStatus
    trainer: ProcessStatus
    rounds: list[dict[str, Any]] = Field(description="The trainer's recent rounds, newest first.")
    at: float


def trainer_summary(trainer: dict[str, Any]) -> str:
    """``idle`` / ``warmup round N`` / ``training round N step k of M (ETA ~s)`` / ``gating round N``."""
    if trainer["state"] != "up":
        return "down"
    m = next(x for x in trainer["members"] if not x["stale"])
    phase, round_no = m.get("phase", "idle"), m.get("round", 0)
    if phase == "idle":
        line = "idle"
    elif phase == "training":
        line = f"training round {round_no} step {m.get('step', 0)} of {m.get('steps', 0)}"
        if m.get("eta_s") is not None:
            line += f" (ETA {float(m['eta_s']):.0f}s)"
    else:
        line = f"{phase} round {round_no}"
    if m.get("last_error"):
        line += f"; last error: {m['last_error']}"
    return line


def aggregator_summary(agg: dict[str, Any]) -> str:
    live = [m for m in agg["members"] if not m["stale"]]
    if not live:
        return "down"
    rate = sum(float(m.get("events_per_s", 0)) for m in live)
    lag = sum(int(m.get("lag", 0)) for m in live)
    return f"{len(live)} member(s), {rate:.1f} events/s, lag {lag}"


def read_rounds(redis, prefix: str, n: int = ROUNDS_SHOWN) -> list[dict[str, Any]]:
    """The last ``n`` finished rounds, newest first, without the bulky gate/train details."""
    rounds = []
    for raw in reversed(redis.lrange(f"{prefix}train:rounds", -n, -1)):
        try:
            r = json.loads(raw)
        except ValueError:
            continue
        rounds.append({k: r.get(k) for k in ROUND_FIELDS if k in r})
    return rounds


def _api_status(state) -> dict[str, Any]:
    watcher, backend = state.watcher, state.backend
    return {
        "state": "up",
        "pid": os.getpid(),
        "uptime_s": round(time.time() - state.started_at, 1),
        "serving": watcher.current_name if watcher else BASE_VERSION,
        "loaded": backend.loaded_adapters() if backend is not None and backend.ready else [],
        "backend": backend.kind if backend is not None else None,
        "model_ready": bool(backend is not None and backend.ready),
        "last_error": (watcher.last_error if watcher else "") or state.backend_error,
        "outbox_pending": state.impressions.outbox.count() if state.impressions else 0,
    }


def gather(state) -> DeploymentStatus:
    """Blocking (Redis); run in a thread."""
    prefix = state.settings.redis_prefix
    aggregator = read_status(state.redis, prefix, "aggregator")
    trainer = read_status(state.redis, prefix, "trainer")
    active, trial = BASE_VERSION, None
    if state.registry is not None:
        active, running = state.registry.serving()
        trial = running.model_dump() if running is not None else None
    return DeploymentStatus(
        active=active,
        trial=trial,
        api=_api_status(state),
        aggregator=ProcessStatus(summary=aggregator_summary(aggregator), **aggregator),
        trainer=ProcessStatus(summary=trainer_summary(trainer), **trainer),
        rounds=read_rounds(state.redis, prefix),
        at=time.time(),
    )


@router.get("/status", response_model=DeploymentStatus)
async def status(state: State) -> DeploymentStatus:
    """The API, the aggregator members and the trainer (``down`` when silent), and recent rounds."""
    return await asyncio.to_thread(gather, state)
