"""OpenAPI documentation of the error answers: ``responses=errors(401, 403, ...)`` on a route
declares each status with the common error body (``schemas.api.ErrorBody``) and what it means."""

from __future__ import annotations

from typing import Any

from schemas.api import ErrorBody

MEANING = {
    400: "The body is not valid JSON (or nests too deeply).",
    401: "No admin bearer token (`Authorization: Bearer <RLHB_API_ADMIN_TOKEN>`).",
    403: "Wrong admin token, or a version that only admins may name.",
    404: "Unknown adapter version.",
    409: "Conflict: the version is rejected, invalid or cannot be loaded; nothing changed.",
    410: "An impression id expired (RLHB_API_IMPRESSION_TTL_S): feedback on it is no longer accepted.",
    413: "The body is over RLHB_API_MAX_BODY_BYTES (checked before it is read), or a batch is over its limit.",
    422: "A field is invalid; the message names it.",
    429: "Too many requests from this client; retry after Retry-After seconds.",
    500: "Internal error: a generic message and the request id (details only in the server log).",
    503: "A dependency is unavailable (model loading, broker, Redis, outbox full); retry after Retry-After.",
}


def errors(*codes: int, **overrides: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route; ``overrides`` (``e404="..."``) replace a status's meaning."""
    return {
        code: {"model": ErrorBody, "description": overrides.get(f"e{code}", MEANING[code])}
        for code in (*codes, 413, 500)
    }
