"""JSON-lines logging: one object per record, with bearer tokens scrubbed as a last line of defence.

Our own code never logs headers, prompts, completions or keys; the scrubbing is for what third-party
code might print (an exception message that quotes a header, say).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

# What a record carries besides its message; attached with `extra={"fields": {...}}`.
FIELDS_ATTR = "fields"
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, stream: Any = None) -> None:
    """Route every logger (uvicorn's too: it is started with log_config=None) to one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
