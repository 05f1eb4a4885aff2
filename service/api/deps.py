"""FastAPI dependencies: thin accessors over AppState, and the admin bearer-token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.rlhb


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="admin token",
    description="RLHB_API_ADMIN_TOKEN, sent as `Authorization: Bearer <token>`.",
)


def require_admin(state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 without a bearer token, 403 with a wrong one. An empty configured token (allowed
    only in dev mode, settings refuse it otherwise) leaves admin open."""
    expected = state.settings.admin_token.get_secret_value()
    if not expected and state.settings.dev_mode:
        return
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            401,
            "admin endpoints need the header 'Authorization: Bearer <RLHB_API_ADMIN_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(403, "wrong admin token", headers={"WWW-Authenticate": "Bearer"})


Admin = Depends(require_admin)


def is_admin(state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> bool:
    """Whether the request carries the admin token (never raises: for routes open to everyone
    that allow admins more, e.g. naming any adapter version). OpenAI clients send their
    ``api_key`` as this bearer token. Dev mode with no token: everyone is admin, as for /admin."""
    expected = state.settings.admin_token.get_secret_value()
    if not expected:
        return state.settings.dev_mode
    given = credentials.credentials if credentials is not None else ""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


IsAdmin = Annotated[bool, Depends(is_admin)]


CLIENT_HEADER = "X-Client-Id"
CLIENT_KEY_PATTERN = r"^[A-Za-z0-9._~:-]{8,128}$"


def client_key(
    x_client_id: Annotated[
        str | None,
        Header(
            alias=CLIENT_HEADER,
            pattern=CLIENT_KEY_PATTERN,
            description="The client's (user's or session's) key, 8-128 characters A-Z a-z 0-9 . _ ~ : -. Impression "
            "ids are bound to it: feedback must send the same one. Without it the API issues one with the answer "
            "(the X-Client-Id response header).",
        ),
    ] = None,
) -> str | None:
    return x_client_id


ClientKey = Annotated[str | None, Depends(client_key)]
"""The ``X-Client-Id`` header (None when absent); malformed: 422 naming the header."""
