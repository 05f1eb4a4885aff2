"""The edge of every request (ASGI middleware, outermost): a request id, the body-size limit
and the last-resort error boundary.

- Request id: taken from a well-formed ``X-Request-Id`` header or made up, sent back in the
  ``X-Request-Id`` response header and put on every log line of the request (``request_id()``).
- Body size: a request whose ``Content-Length`` is over ``max_body_bytes`` is answered 413
  before a byte of its body is read; a body without a length (chunked) is counted as it
  streams and cut off with 413 at the limit. Routes never see more than the limit, so a huge
  upload cannot grow the process's memory (150 MB bodies used to be read whole first).
- Error boundary: an exception no handler turned into an HTTP error becomes a 500 with a
  generic message and the request id; the exception and its traceback go to the log only,
  never to the client (its text can name files, hosts or internals).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets

from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("rlhb_request_id", default="")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's id is echoed only if harmless


def request_id() -> str:
    """The id of the request being handled ('' outside one)."""
    return _request_id.get()


def _too_large_message(limit: int, size: int | None = None) -> str:
    got = f"the body is {size} bytes; " if size is not None else "the body is larger than that; "
    return (
        f"request body too large: {got}at most {limit} bytes are accepted (RLHB_API_MAX_BODY_BYTES); "
        "send less (split feedback batches)"
    )


def _error_json(status: int, message: str) -> bytes:
    from service.api.app import error_body

    return json.dumps(error_body(status, message)).encode()


class RequestEdge:
    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else secrets.token_hex(8)
        token = _request_id.set(rid)
        started = {"yes": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                started["yes"] = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    size = int(length)
                except ValueError:
                    await self._reply(send_with_id, 400, "Content-Length is not a number")
                    return
                if size > self.max_body_bytes:
                    await self._reply(send_with_id, 413, _too_large_message(self.max_body_bytes, size))
                    return
            await self.app(scope, self._counting(receive), send_with_id)
        except HTTPException as e:  # the body limit, raised while something outside a route read the body
            if not started["yes"]:
                await self._reply(send_with_id, e.status_code, str(e.detail))
        except Exception:
            log.exception("unhandled error", extra={"event": "unhandled_error", "request_id": rid})
            if not started["yes"]:
                await self._reply(
                    send_with_id,
                    500,
                    f"internal error (request id {rid}); the server logged the details, retry or report the id",
                )
        finally:
            _request_id.reset(token)

    def _counting(self, receive):
        """``receive`` that stops a streamed body at the limit (raised as HTTP 413; FastAPI passes
        HTTPExceptions raised while reading the body through to the error handlers)."""
        seen = 0
        limit = self.max_body_bytes

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _too_large_message(limit))
            return message

        return counted

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = _error_json(status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
