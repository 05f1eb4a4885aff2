"""Where the deployment's behavior encoding lives, so the API, aggregator and trainer agree.

The aggregator writes the encoding (name, levels, fitted edges) as JSON under
``<redis_prefix>encoding`` at start-up and whenever it refits the edges; readers call
``load_encoding``. The serving API builds its default prompt with
``most_preferred_sentence(load_encoding(redis, prefix))``. Takes any redis-py client
(decode_responses either way); imports nothing heavy.
"""

from __future__ import annotations

from core.behavior.encoding import DEFAULT_ENCODING, Encoding, encoding_from_json, encoding_to_json


def encoding_key(prefix: str) -> str:
    return prefix + "encoding"


def load_encoding(redis, prefix: str, default: Encoding | None = None) -> Encoding:
    """The stored encoding, or ``default`` (the rates encoding with prior edges) if none is stored."""
    raw = redis.get(encoding_key(prefix))
    if not raw:
        return default or DEFAULT_ENCODING
    return encoding_from_json(raw)


def save_encoding(redis, prefix: str, encoding: Encoding) -> None:
    redis.set(encoding_key(prefix), encoding_to_json(encoding))
