"""``rlhb.client``: a small helper for applications that ask the service and report reactions.

    from rlhb.client import RlhbClient

    with RlhbClient("http://127.0.0.1:8000") as rc:
        answer = rc.ask("What is the capital of France?")
        print(answer.text)
        rc.view(answer)
        rc.like(answer)

Questions go through the official ``openai`` client (``/v1/chat/completions``); the answer
comes back with its signed impression id. Reactions are POSTed to ``/v1/feedback`` with the
same ``X-Client-Id`` the question was asked with (ids are bound to it; without one the API
would issue its own). Each (impression, kind) gets one event id derived from the client id,
the impression id and the kind, so a reaction retried after a timeout, a 429 or a 5xx carries
the same event id and the body of the first attempt: the API answers it as a duplicate, and
the aggregator (which counts each event id once) counts it once even through a trusted relay.

``openai`` is imported on the first question, so an application that only sends feedback
does not need it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from schemas.feedback import FeedbackKind

CLIENT_HEADER = "X-Client-Id"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers after which the same request may succeed; every other 4xx is final."""


@dataclass(frozen=True)
class Answer:
    """One served answer and what feedback needs to refer to it."""

    text: str
    impression_id: str
    version: str
    behavior: str
    finish_reason: str


class FeedbackError(RuntimeError):
    """Feedback that was not recorded: ``status`` is the last HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, attempts: int = 1):
        super().__init__(message)
        self.status, self.attempts = status, attempts


def event_id_for(client_id: str, impression_id: str, kind: str) -> str:
    """The one event id of ``kind`` on this impression from this client (retries reuse it)."""
    digest = hashlib.sha256(f"{client_id}\x00{impression_id}\x00{kind}".encode()).hexdigest()[:32]
    return f"{kind}-{digest}"


class RlhbClient:
    """Ask through the ``openai`` client; report view/click/like/dislike with retries.

    ``client_id``: the user's or session's key (8-128 characters A-Z a-z 0-9 . _ ~ : -; default:
    a random one per client object). ``api_key``: the admin token, only for trusted relays
    (sent as ``Authorization: Bearer``). ``retries``: extra attempts of a feedback request after
    a timeout, connection error, 429 or 5xx, waiting ``backoff_s`` doubled each time (or the
    server's Retry-After, if longer), at most ``max_backoff_s``. ``transport``: an httpx
    transport for both clients (proxies, tests).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or f"rlhb-{uuid.uuid4().hex}"
        self.api_key = api_key
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._timeout_s, self._transport = timeout_s, transport
        headers = {CLIENT_HEADER: self.client_id}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._openai = None

    # ------------------------------------------------------------------ asking
    @property
    def openai(self):
        """The ``openai.OpenAI`` client bound to this service and client id (created on first use)."""
        if self._openai is None:
            try:
                import openai
            except ImportError:
                raise ImportError(
                    "rlhb.client asks through the `openai` package: pip install 'openai>=1.40' "
                    "(feedback alone does not need it)"
                ) from None
            http = httpx.Client(timeout=self._timeout_s, transport=self._transport) if self._transport else None
            self._openai = openai.OpenAI(
                base_url=f"{self.base_url}/v1",
                api_key=self.api_key or "no-key",  # the openai client insists on one; the API ignores a wrong one
                default_headers={CLIENT_HEADER: self.client_id},
                timeout=self._timeout_s,
                http_client=http,
            )
        return self._openai

    def chat(self, messages: list[dict], model: str = "rlhb-latest", behavior: str | None = None, **kw: Any) -> Answer:
        """A chat completion (``kw``: max_tokens, temperature, top_p, stop...) as an ``Answer``."""
        extra = {"behavior": behavior} if behavior else None
        resp = self.openai.chat.completions.create(model=model, messages=messages, extra_body=extra, **kw)
        fields = resp.model_extra or {}
        return Answer(
            text=resp.choices[0].message.content or "",
            impression_id=fields["impression_id"],
            version=fields.get("adapter_version", resp.model),
            behavior=fields.get("behavior", ""),
            finish_reason=resp.choices[0].finish_reason,
        )

    def ask(self, question: str, **kw: Any) -> Answer:
        """One user question (see ``chat`` for the options)."""
        return self.chat([{"role": "user", "content": question}], **kw)

    # ------------------------------------------------------------------ reacting
    def feedback(self, answer: Answer | str, kind: str, value: float = 1.0, event_id: str | None = None) -> dict:
        """Record one reaction; returns the API's ``{"accepted": n, "duplicates": m}``.

        Raises ValueError for an unknown kind and FeedbackError when the API refuses (a 4xx
        other than 408/429, e.g. 403: the impression was issued to another client id) or every
        attempt failed."""
        kind = FeedbackKind(kind).value
        impression_id = answer.impression_id if isinstance(answer, Answer) else answer
        body = {
            "event_id": event_id or event_id_for(self.client_id, impression_id, kind),
            "impression_id": impression_id,
            "kind": kind,
            "value": value,
            "ts": time.time(),  # fixed here: every retry sends the first attempt's body
        }
        return self._post_with_retries("/v1/feedback", body)

    def view(self, answer: Answer | str) -> dict:
        return self.feedback(answer, "view")

    def click(self, answer: Answer | str) -> dict:
        return self.feedback(answer, "click")

    def like(self, answer: Answer | str) -> dict:
        return self.feedback(answer, "like")

    def dislike(self, answer: Answer | str) -> dict:
        return self.feedback(answer, "dislike")

    def _post_with_retries(self, path: str, body: dict) -> dict:
        attempts, status, why = 0, 0, ""
        while True:
            attempts += 1
            wait = 0.0
            try:
                r = self.http.post(path, json=body)
            except httpx.TransportError as e:  # timeout, refused, reset: the server may or may not have it
                status, why = 0, f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 300:
                    return r.json()
                status, why = r.status_code, _message(r)
                if status not in RETRY_STATUSES:
                    raise FeedbackError(f"feedback refused ({status}): {why}", status, attempts)
                wait = _retry_after(r)
            if attempts > self.retries:
                raise FeedbackError(f"feedback not recorded after {attempts} attempts: {why}", status, attempts)
            delay = self.backoff_s * 2 ** (attempts - 1)
            time.sleep(min(self.max_backoff_s, max(delay, wait)))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.http.close()
        if self._openai is not None:
            self._openai.close()

    def __enter__(self) -> RlhbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:300]


def _retry_after(r: httpx.Response) -> float:
    try:
        return float(r.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
