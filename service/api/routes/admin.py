"""Admin, behind the bearer admin token: checkpoints, promote, rollback, train.

Without Redis every admin route answers 503 with Retry-After (the handler in service.api.app).

Promote and rollback validate the target (registered, folder complete, weights' sha256 as
recorded) before the pointer moves; a refused move answers 404 (unknown version) or 409
(invalid, rejected, nothing to roll back to) and changes nothing. After a move this
instance checks the pointer at once (other instances within ``adapter_poll_s``);
``?wait=true`` answers only once this instance serves the new version (or failed to load it).
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from schemas.adapters import BASE_VERSION, AdapterVersion
from service.api.deps import Admin, State
from service.api.errors_doc import errors

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Admin],
    responses=errors(401, 403, 503, e503="Redis (the registry's pointer, the train queue) is unreachable; retry."),
)

WAIT_S = 15.0


class Checkpoints(BaseModel):
    active: str = Field(description="The registry's active version (the Redis pointer).")
    serving: str = Field(description="What this instance serves by default right now.")
    loaded: list[str] = Field(description="Versions loaded in this instance's backend.")
    history: list[str] = Field(description="Previous active versions, most recent last (rollback order).")
    last_error: str = Field(description="Why the last hot-swap failed, if it did.")
    versions: list[AdapterVersion]


class PointerMoved(BaseModel):
    active: str
    previous: str
    serving: str = Field(description="This instance's version when answering (see ?wait).")
    last_error: str = ""


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: str | None = Field(
        default=None,
        pattern="^(rlhb|rlhbc|rlhf|sft|pro)$",
        description="Override the trainer's algorithm for this round.",
    )
    reason: str = Field(default="admin request", max_length=500)


class TrainQueued(BaseModel):
    queued: bool = True
    queue: str
    position: int


def _registry(state):
    if state.registry is None:
        raise HTTPException(503, "no adapter registry is configured on this instance")
    return state.registry


def _registry_error():
    from core.registry import RegistryError

    return RegistryError


async def _wait_serving(state, name: str) -> None:
    watcher = state.watcher
    if watcher is None:
        return
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        await watcher.check()
        if watcher.current_name == name or (watcher.last_error and name in watcher.last_error):
            return
        await asyncio.sleep(0.02)


async def _moved(state, previous: str, active: str, wait: bool) -> PointerMoved:
    if state.watcher is not None:
        state.watcher.poke()
        if wait:
            await _wait_serving(state, active)
    watcher = state.watcher
    return PointerMoved(
        active=active,
        previous=previous,
        serving=watcher.current_name if watcher else BASE_VERSION,
        last_error=watcher.last_error if watcher else "",
    )


@router.get("/checkpoints", response_model=Checkpoints)
async def checkpoints(state: State) -> Checkpoints:
    """Registered adapter versions, the active one and what this instance serves."""
    registry = _registry(state)
    versions, active, history = await asyncio.to_thread(
        lambda: (registry.list(), registry.active(), registry.history())
    )
    watcher = state.watcher
    return Checkpoints(
        active=active,
        serving=watcher.current_name if watcher else BASE_VERSION,
        loaded=state.backend.loaded_adapters() if state.backend is not None else [],
        history=history,
        last_error=watcher.last_error if watcher else "",
        versions=versions,
    )


@router.post("/promote/{version}", response_model=PointerMoved, responses=errors(404, 409))
async def promote(version: str, state: State, wait: bool = False) -> PointerMoved:
    """Validate ``version`` and make it the active one."""
    registry, registry_error = _registry(state), _registry_error()

    def move() -> tuple[str, str]:
        previous = registry.active()
        try:
            registry.get(version)
        except KeyError:
            raise HTTPException(
                404, f"unknown adapter version {version!r}; GET /admin/checkpoints lists them"
            ) from None
        try:
            return previous, registry.promote(version).name
        except registry_error as e:
            raise HTTPException(409, str(e)) from None

    previous, active = await asyncio.to_thread(move)
    return await _moved(state, previous, active, wait)


@router.post("/rollback", response_model=PointerMoved, responses=errors(409))
async def rollback(state: State, wait: bool = False) -> PointerMoved:
    """Make the previously active version active again (validated first)."""
    registry, registry_error = _registry(state), _registry_error()

    def move() -> tuple[str, str]:
        previous = registry.active()
        target = registry.rollback_target()
        if target is None:
            raise HTTPException(
                409,
                f"nothing to roll back to: {previous!r} is the first active version; "
                "POST /admin/promote/{version} to choose one explicitly",
            )
        try:
            if target != BASE_VERSION:
                registry.validate(target)
            return previous, registry.rollback()
        except registry_error as e:
            raise HTTPException(409, f"cannot roll back to {target!r}: {e}") from None

    previous, active = await asyncio.to_thread(move)
    return await _moved(state, previous, active, wait)


@router.post("/train", status_code=202, response_model=TrainQueued, responses=errors(400, 422))
async def train(state: State, body: TrainRequest | None = Body(default=None)) -> TrainQueued:
    """Ask the trainer for a training round (queued on Redis; the trainer consumes it)."""
    body = body or TrainRequest()
    key = f"{state.settings.redis_prefix}train:requests"
    payload = {"requested_at": time.time(), "reason": body.reason}
    if body.algorithm:
        payload["algorithm"] = body.algorithm
    position = await asyncio.to_thread(state.redis.rpush, key, json.dumps(payload))
    return TrainQueued(queue=key, position=int(position))
