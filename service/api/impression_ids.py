"""Signed impression ids: ``<random id>.<hmac>``.

The HMAC (SHA-256, truncated to 128 bits, urlsafe base64) over the random part proves
the server issued the id, so feedback cannot be attached to answers it never gave.
Verification is constant-time. Rotating the secret invalidates outstanding ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pydantic import SecretStr

_SIG_BYTES = 16


class ImpressionSigner:
    def __init__(self, secret: str | SecretStr):
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        if not secret:
            raise ValueError("impression secret must not be empty")
        self._key = secret.encode()

    def _sig(self, raw: str) -> str:
        digest = hmac.new(self._key, raw.encode(), hashlib.sha256).digest()[:_SIG_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def new_id(self) -> str:
        raw = secrets.token_urlsafe(12)
        return f"{raw}.{self._sig(raw)}"

    def verify(self, impression_id: str) -> bool:
        # Issued ids are ASCII (urlsafe base64); anything else is forged. Checked first because
        # compare_digest raises TypeError on non-ASCII str (and encode() on lone surrogates).
        if not impression_id.isascii():
            return False
        raw, sep, sig = impression_id.rpartition(".")
        if not sep or not raw or not sig:
            return False
        return hmac.compare_digest(sig.encode(), self._sig(raw).encode())
