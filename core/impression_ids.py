"""Signed impression ids, shared by the API (which issues and checks them) and the aggregator
(which checks events written straight to Kafka with the same keys).

Format (issue 16, item 2)::

    <random>.<key id>.<expiry>.<client binding>.<signature>

- ``random``: 16 urlsafe characters (the id proper; chat completion ids reuse it).
- ``key id``: which secret signed it. The signer signs with the current key; verification
  accepts the current key and every older key still configured, so keys rotate without
  invalidating the ids in flight (drop an old key once its ids have expired).
- ``expiry``: unix seconds, base 10. Feedback after it is refused (the answer is stale, and a
  bounded lifetime bounds every per-id store: dedupe keys, the aggregator's pending events).
- ``client binding``: HMAC(key, client key, random), 64 bits. The id is bound to the client
  key of whoever asked (``X-Client-Id``, or one the API issued); only feedback carrying the
  same client key passes ``check(..., client_key=...)``. The client key itself is not in the id.
- ``signature``: HMAC-SHA-256 over everything before it, 128 bits, urlsafe base64.

Ids of the first format (``<random>.<signature>``: no key id, expiry or binding) verify while
``accept_legacy`` is on, against every configured key, for the transition only.

Verification is constant-time on the signature. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

_SIG_BYTES = 16
_BIND_BYTES = 8
_KEY_ID = re.compile(r"^[a-z0-9_-]{1,16}$")
_RAW = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EXPIRY = re.compile(r"^[0-9]{1,12}$")


@dataclass(frozen=True)
class IdProblem:
    """Why an id is refused: ``status`` is the HTTP status the API answers (the aggregator
    dead-letters), ``reason`` a one-line explanation for the client or the dead-letter record."""

    status: int
    reason: str


@dataclass(frozen=True)
class IdFacts:
    """What a valid id says: ``expires_at`` (None for a legacy id) and whether it is bound to a
    client key (legacy ids are not)."""

    raw: str
    key_id: str
    expires_at: float | None
    bound: bool


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse_old_secrets(spec: str) -> dict[str, str]:
    """``"k0=secret,k-1=older"`` -> {key id: secret} (the RLHB_API_IMPRESSION_OLD_SECRETS format)."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, secret = item.partition("=")
        kid = kid.strip().lower()
        if not sep or not secret or not _KEY_ID.match(kid):
            raise ValueError(
                "old impression secrets must be 'keyid=secret' pairs separated by commas, key ids of 1-16 "
                "characters a-z 0-9 _ -"
            )
        out[kid] = secret
    return out


class ImpressionIds:
    """Issues ids with the current key; checks ids against the current and the older keys."""

    def __init__(
        self,
        secret: str,
        key_id: str = "k1",
        old_secrets: dict[str, str] | None = None,
        ttl_s: float = 7 * 86400.0,
        accept_legacy: bool = True,
    ):
        if hasattr(secret, "get_secret_value"):  # a pydantic SecretStr
            secret = secret.get_secret_value()
        if not secret:
            raise ValueError("impression secret must not be empty")
        key_id = key_id.lower()
        if not _KEY_ID.match(key_id):
            raise ValueError(f"impression key id {key_id!r}: 1-16 characters a-z 0-9 _ -")
        if ttl_s <= 0:
            raise ValueError("impression id lifetime must be > 0 seconds")
        self.key_id = key_id
        self.ttl_s = float(ttl_s)
        self.accept_legacy = accept_legacy
        self._keys = {kid.lower(): s.encode() for kid, s in (old_secrets or {}).items() if s}
        self._keys[key_id] = secret.encode()

    # ------------------------------------------------------------------ issuing
    def issue(self, client_key: str = "", now: float | None = None) -> str:
        """A new id signed with the current key, bound to ``client_key``, expiring after ``ttl_s``."""
        raw = secrets.token_urlsafe(12)
        expiry = str(int((time.time() if now is None else now) + self.ttl_s))
        key = self._keys[self.key_id]
        body = f"{raw}.{self.key_id}.{expiry}.{self._binding(key, raw, client_key)}"
        return f"{body}.{self._sig(key, body)}"

    def new_id(self) -> str:
        """An id bound to the empty client key (tests and tools; the API always binds one)."""
        return self.issue("")

    # ------------------------------------------------------------------ checking
    def check(
        self, impression_id: str, client_key: str | None = None, now: float | None = None
    ) -> tuple[IdFacts | None, IdProblem | None]:
        """(facts, None) for an id this service issued, unexpired and -- when ``client_key`` is
        given -- bound to that client key; else (None, problem). ``client_key=None`` skips the
        binding (the aggregator's check of events written straight to Kafka, whose producers are
        trusted and whose events carry no client key)."""
        # Issued ids are ASCII; anything else is forged. Checked first because compare_digest
        # raises TypeError on non-ASCII str (and encode() on lone surrogates).
        if not isinstance(impression_id, str) or not impression_id.isascii():
            return None, _forged(impression_id)
        parts = impression_id.split(".")
        if len(parts) == 2:
            return self._check_legacy(impression_id, parts)
        if len(parts) != 5:
            return None, _forged(impression_id)
        raw, kid, expiry, binding, sig = parts
        if not (_RAW.match(raw) and _KEY_ID.match(kid) and _EXPIRY.match(expiry)):
            return None, _forged(impression_id)
        key = self._keys.get(kid)
        if key is None:
            return None, IdProblem(
                422,
                f"{_short(impression_id)} was signed with key {kid!r}, which this server no longer accepts "
                "(retired after rotation); feedback for it cannot be recorded",
            )
        if not hmac.compare_digest(sig.encode(), self._sig(key, impression_id.rpartition(".")[0]).encode()):
            return None, _forged(impression_id)
        expires_at = float(expiry)
        if (time.time() if now is None else now) > expires_at:
            return None, IdProblem(
                410,
                f"{_short(impression_id)} expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires_at))} "
                f"(ids live {self.ttl_s / 86400:g} days, RLHB_API_IMPRESSION_TTL_S): feedback on it is no longer "
                "accepted",
            )
        if client_key is not None and not hmac.compare_digest(
            binding.encode(), self._binding(key, raw, client_key).encode()
        ):
            return None, IdProblem(
                403,
                f"{_short(impression_id)} was issued to another client: send the X-Client-Id header that came "
                "with the answer (the one you sent with the question, or the one the API issued)",
            )
        return IdFacts(raw=raw, key_id=kid, expires_at=expires_at, bound=True), None

    def verify(self, impression_id: str, client_key: str | None = None) -> bool:
        """Whether ``check`` passes (signature, key, expiry; binding when ``client_key`` is given)."""
        return self.check(impression_id, client_key)[1] is None

    def _check_legacy(self, impression_id: str, parts: list[str]) -> tuple[IdFacts | None, IdProblem | None]:
        raw, sig = parts
        if not raw or not sig:
            return None, _forged(impression_id)
        for kid, key in self._keys.items():
            if hmac.compare_digest(sig.encode(), self._sig(key, raw).encode()):
                if not self.accept_legacy:
                    return None, IdProblem(
                        410,
                        f"{_short(impression_id)} is an id of the old format (no expiry), no longer accepted "
                        "(RLHB_API_IMPRESSION_ACCEPT_LEGACY is off)",
                    )
                return IdFacts(raw=raw, key_id=kid, expires_at=None, bound=False), None
        return None, _forged(impression_id)

    @staticmethod
    def _sig(key: bytes, text: str) -> str:
        return _b64(hmac.new(key, text.encode(), hashlib.sha256).digest()[:_SIG_BYTES])

    @staticmethod
    def _binding(key: bytes, raw: str, client_key: str) -> str:
        msg = f"client\x00{raw}\x00{client_key}".encode("utf-8", "surrogatepass")
        return _b64(hmac.new(key, msg, hashlib.sha256).digest()[:_BIND_BYTES])


def _short(impression_id: str) -> str:
    return repr(impression_id if len(impression_id) <= 80 else impression_id[:77] + "...")


def _forged(impression_id) -> IdProblem:
    return IdProblem(
        422,
        f"{_short(str(impression_id))} is not an impression id issued by this server (malformed or bad "
        "signature); use the impression_id returned by /v1/query",
    )
