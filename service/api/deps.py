"""FastAPI dependencies: thin accessors over AppState."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.rlhb


State = Annotated[AppState, Depends(get_state)]
