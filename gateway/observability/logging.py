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
# Fields carry what clients sent (model names, paths, ids): a line stays small whatever they send.
MAX_FIELD_CHARS = 256
MAX_MESSAGE_CHARS = 4096


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", text)


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` cut to `limit` characters, and marked so when it was."""
    return text if len(text) <= limit else f"{text[:limit]}…[{len(text) - limit} more chars]"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clip(redact(record.getMessage()), MAX_MESSAGE_CHARS),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            entry.update({name: clip(value) if isinstance(value, str) else value for name, value in fields.items()})
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
