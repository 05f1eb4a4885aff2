"""The operator dashboard: ``GET /dashboard`` (the page, open: it holds no data) and the
admin-token routes it polls.

- ``GET /admin/versions``: every registered version with its lineage, its gate result (from the
  round that trained it) and its live like rate per view with a 95% Wilson interval and the
  views so far (the trainer's live counts, rebuilt from the behavior records).
- ``GET /admin/rounds/{round}/curve``: one round's per-iteration reward, KL, D accuracy and clip
  fraction (written by the trainer while it trains; the last rounds only).

The page is static HTML, vanilla JS and CSS from the package (service/api/static/dashboard.*):
no build step, no CDN, a strict CSP. The admin token is asked once, kept in sessionStorage and
sent as ``Authorization: Bearer``; never in a URL.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, Field

from core.process_status import read_curve, read_status, wilson_interval
from schemas.adapters import BASE_VERSION
from service.api.deps import Admin, State
from service.api.errors_doc import errors
from service.api.static_pages import page_response

page = APIRouter(tags=["dashboard"])
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Admin],
    responses=errors(401, 403, 503, e503="Redis (the registry, the trainer's state) is unreachable; retry."),
)

ASSETS = frozenset({"dashboard.js", "dashboard.css"})
GATE_ROUNDS_READ = 200  # the trainer keeps this many rounds (trainer.loop.ROUNDS_KEPT)


@page.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response:
    return page_response("dashboard.html")


@page.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str) -> Response:
    return page_response(asset, ASSETS, "/dashboard")


class LiveRate(BaseModel):
    views: float
    likes: float
    like_rate: float | None = Field(description="Likes per view (None before the first view).")
    ci_low: float = Field(description="95% Wilson interval, low end.")
    ci_high: float = Field(description="95% Wilson interval, high end.")


class VersionRow(BaseModel):
    name: str
    id: int
    parent: str | None
    lineage: list[str] = Field(description="This version, its parent, ... back to the first (base not listed).")
    algorithm: str
    status: str
    reason: str
    created_at: float
    active: bool
    gate: dict[str, Any] | None = Field(description="The trainer's round that made it: outcome, reason, metrics.")
    live: LiveRate


class Versions(BaseModel):
    active: str
    trial: dict[str, Any] | None
    history: list[str] = Field(description="Previous active versions, most recent last (rollback order).")
    rollback_target: str | None
    live_counts_from: str = Field(description="live (trainer up), last known (trainer down) or none.")
    versions: list[VersionRow] = Field(description="Newest first; the base model last.")


class Curve(BaseModel):
    round: int
    points: list[dict[str, Any]]


def live_rate(views: float, likes: float) -> LiveRate:
    lo, hi = wilson_interval(likes, views)
    return LiveRate(views=views, likes=likes, like_rate=likes / views if views > 0 else None, ci_low=lo, ci_high=hi)


def _live_counts(redis, prefix: str) -> tuple[dict[str, Any], str]:
    """The trainer's per-version counts: its live status, else the last one it left."""
    trainer = read_status(redis, prefix, "trainer")
    for m in trainer["members"]:
        if not m["stale"] and isinstance(m.get("live_counts"), dict):
            return m["live_counts"], "live"
    raw = redis.get(f"{prefix}train:status")
    if raw:
        try:
            counts = json.loads(raw).get("live_counts")
            if isinstance(counts, dict):
                return counts, "last known"
        except (ValueError, AttributeError):
            pass
    return {}, "none"


def _gates(redis, prefix: str) -> dict[str, dict[str, Any]]:
    gates = {}
    for raw in redis.lrange(f"{prefix}train:rounds", -GATE_ROUNDS_READ, -1):
        try:
            r = json.loads(raw)
        except ValueError:
            continue
        if r.get("version"):
            metrics = {
                k: v for k, v in (r.get("gate") or {}).items() if isinstance(v, int | float) and math.isfinite(v)
            }
            gates[r["version"]] = {
                "round": r.get("round"),
                "outcome": r.get("outcome"),
                "reason": r.get("reason", ""),
                "metrics": metrics,
            }
    return gates


def gather_versions(state) -> Versions:
    registry, prefix = state.registry, state.settings.redis_prefix
    if registry is None:
        raise HTTPException(503, "no adapter registry is configured on this instance")
    versions = registry.list()
    active, trial = registry.serving()
    counts, source = _live_counts(state.redis, prefix)
    gates = _gates(state.redis, prefix)
    by_name = {v.name: v for v in versions}

    def lineage(name: str) -> list[str]:
        chain, seen = [], set()
        while name and name in by_name and name not in seen:  # a cycle or a pruned parent ends it
            seen.add(name)
            chain.append(name)
            name = by_name[name].parent or ""
        return chain

    def rate(name: str) -> LiveRate:
        c = counts.get(name) or {}
        return live_rate(float(c.get("views", 0) or 0), float(c.get("likes", 0) or 0))

    rows = [
        VersionRow(
            name=v.name,
            id=v.id,
            parent=v.parent,
            lineage=lineage(v.name),
            algorithm=v.algorithm,
            status=v.status.value,
            reason=v.reason,
            created_at=v.created_at,
            active=v.name == active,
            gate=gates.get(v.name),
            live=rate(v.name),
        )
        for v in sorted(versions, key=lambda v: v.id, reverse=True)
    ]
    rows.append(
        VersionRow(
            name=BASE_VERSION,
            id=0,
            parent=None,
            lineage=[],
            algorithm="",
            status="published",
            reason="",
            created_at=0.0,
            active=active == BASE_VERSION,
            gate=None,
            live=rate(BASE_VERSION),
        )
    )
    return Versions(
        active=active,
        trial=trial.model_dump() if trial is not None else None,
        history=registry.history(),
        rollback_target=registry.rollback_target(),
        live_counts_from=source,
        versions=rows,
    )


@router.get("/versions", response_model=Versions)
async def versions(state: State) -> Versions:
    """Versions with lineage, gate result and live like rate (95% CI), for the dashboard."""
    return await asyncio.to_thread(gather_versions, state)


@router.get("/rounds/{round_no}/curve", response_model=Curve)
async def curve(state: State, round_no: Annotated[int, Path(ge=1, le=10**9)]) -> Curve:
    """One round's training curve (empty for a round that is not kept or never trained)."""
    points = await asyncio.to_thread(read_curve, state.redis, state.settings.redis_prefix, round_no)
    return Curve(round=round_no, points=points)
