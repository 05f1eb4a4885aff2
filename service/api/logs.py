"""Structured logs: one JSON object per line on stderr.

Fields: ``ts`` (unix seconds), ``level``, ``logger``, ``msg``, plus whatever the call passed
in ``extra=`` (for example ``event``, ``route``, ``status``, ``ms``, ``impression_id``,
``adapter_version``), ``request_id`` while a request is handled, and ``exc`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if "request_id" not in out:
            from service.api.edge import request_id

            if rid := request_id():  # every line logged while a request is handled names it
                out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_json_logging(level: str = "info") -> None:
    """Route every logger (ours, uvicorn's, kafka's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the API logs each request itself (service.api.app)
    logging.getLogger("kafka").setLevel(logging.WARNING)
