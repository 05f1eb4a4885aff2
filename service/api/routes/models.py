"""GET /v1/models: the OpenAI model list -- the active alias, the base model and every
servable adapter version (rejected candidates are left out)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from schemas.adapters import BASE_VERSION, AdapterStatus
from schemas.openai import LATEST_ALIAS, ModelCard, ModelList
from service.api.deps import State

router = APIRouter(tags=["generation"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    """Model ids accepted by /v1/chat/completions."""
    root = state.backend.model_id if state.backend is not None else ""
    created = int(state.started_at)
    serving = state.watcher.current_name if state.watcher is not None else BASE_VERSION
    cards = [
        ModelCard(id=LATEST_ALIAS, created=created, root=root, active=True, parent=serving),
        ModelCard(id=BASE_VERSION, created=created, root=root, active=serving == BASE_VERSION),
    ]
    versions = await asyncio.to_thread(state.registry.list) if state.registry is not None else []
    cards += [
        ModelCard(
            id=v.name,
            created=int(v.created_at),
            root=root,
            parent=v.parent,
            status=v.status.value,
            active=v.name == serving,
        )
        for v in versions
        if v.status != AdapterStatus.rejected
    ]
    return ModelList(data=cards)
