"""Credentials never reach a log line: ``redis://user:secret@host`` -> ``redis://user:***@host``.

Used on the values the aggregator logs itself (``redact``) and, as a logging filter on the
process's handlers (``RedactingFilter``), on every other line too -- a client library's
error message may quote the URL it was given."""

from __future__ import annotations

import logging
import re
import traceback

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s/@]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|token|secret)=)[^&\s]+", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with passwords inside URLs (userinfo and query parameters) replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with ``redact`` (install it on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:  # formatters use exc_text when it is set
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return True
