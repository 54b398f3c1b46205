"""Structured JSON logging, one object per line: time, level, service, logger, message and any `extra` fields."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from datetime import UTC, datetime

import orjson

_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}
# Credentials in URLs (browsers' EventSource and WebSocket cannot set headers, so `?token=` exists) must not reach a
# log line, whoever writes it: uvicorn logs every WebSocket handshake with its query string.
_SECRET_IN_URL = re.compile(r"([?&](?:token|access_token|password)=)[^&\s\"']+", re.IGNORECASE)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": _redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return orjson.dumps(out, default=str).decode()


def configure(service: str, level: str = "INFO") -> None:
    """Route every logger (uvicorn's too) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "nats", "asyncio"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _redact(msg: str) -> str:
    return _SECRET_IN_URL.sub(r"\1[redacted]", msg) if "=" in msg else msg
