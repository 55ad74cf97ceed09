"""Structured logs: one JSON object per line, with the request id on every line about a request."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

ACCESS = logging.getLogger("slserve.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """One plain line, carrying every field the JSON line carries (as key=value after the message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        head, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} {pairs}{newline}{rest}"


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return orjson.dumps(text).decode() if not text or any(c in text for c in ' "=') else text


def configure(level: str, fmt: str) -> None:
    """slserve's loggers (and uvicorn's) write to stderr, as JSON lines unless `fmt` is "text"."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    for name in ("slserve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())


def access(message: str, **fields: Any) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(message, extra={"fields": fields})
