"""Credentials never reach a log line: ``redis://user:secret@host`` -> ``redis://user:***@host``.

``redact`` is core.infra.redis_url's (the one redaction); ``RedactingFilter`` applies it, as a
logging filter on the process's handlers, to every other line too -- a client library's error
message may quote the URL it was given."""

from __future__ import annotations

import logging
import traceback

from core.infra.redis_url import redact

__all__ = ["RedactingFilter", "redact"]


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
