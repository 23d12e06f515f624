"""A batch's input file read into lines: each a JSON object {custom_id, method, url, body}, as OpenAI's.

What makes the whole file unusable fails the batch, with OpenAI's `errors` (a code, a message, the line):
a line that is not a JSON object, one without a string custom_id (its result could not be keyed), a custom_id
used twice, an empty file, more than MAX_LINES lines. A line that can be keyed but not run (another method,
another url than the batch's endpoint, a body that is not an object, a stream) is answered in the error file
under its custom_id, and the rest of the batch runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.store.batches import NewLine, new_request_id

MAX_LINES = 50_000  # OpenAI's limit on a batch's requests
_MAX_ERRORS = 100  # file errors reported (the first ones)


async def split_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """The file's lines, numbered from 1; blank lines are skipped but counted."""
    rest = b""
    number = 0
    async for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for raw in whole:
            number += 1
            if raw.strip():
                yield number, raw
    if rest.strip():
        yield number + 1, rest


def _file_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _line_error(custom_id: str, line: int, message: str) -> dict[str, Any]:
    return {
        "id": new_request_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "invalid_request", "message": f"Line {line}: {message}"},
    }


def _read_line(number: int, raw: bytes, endpoint: str) -> NewLine | dict[str, Any]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _file_error("invalid_json_line", f"Line {number} is not valid JSON.", number)
    if not isinstance(request, dict):
        return _file_error("invalid_json_line", f"Line {number} is not a JSON object.", number)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 512:
        return _file_error("missing_custom_id", f"Line {number} has no custom_id (a string of 1 to 512).", number)
    body = request.get("body")
    problem = None
    if request.get("method") != "POST":
        problem = "method must be POST."
    elif request.get("url") != endpoint:
        problem = f"url must be the batch's endpoint, {endpoint}."
    elif not isinstance(body, dict):
        problem = "body must be a JSON object."
    elif body.get("stream") is True:
        problem = "streaming is not supported in a batch."
    if problem is not None:
        return NewLine(number, custom_id, None, _line_error(custom_id, number, problem))
    assert isinstance(body, dict)
    return NewLine(number, custom_id, body)


async def read_input(chunks: AsyncIterator[bytes], endpoint: str) -> tuple[list[NewLine], list[dict[str, Any]]]:
    """The lines to store, and the file's errors (when there are any, the batch fails and no line runs)."""
    lines: list[NewLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    async for number, raw in split_lines(chunks):
        read = _read_line(number, raw, endpoint)
        if isinstance(read, dict):
            errors.append(read)
        elif read.custom_id in seen:
            errors.append(_file_error("duplicate_custom_id", f"Line {number} repeats custom_id.", number))
        else:
            seen.add(read.custom_id)
            lines.append(read)
        if len(lines) + len(errors) > MAX_LINES:
            return [], [_file_error("too_many_requests", f"A batch holds at most {MAX_LINES} requests.")]
        if len(errors) >= _MAX_ERRORS:
            break
    if not lines and not errors:
        errors.append(_file_error("empty_file", "The input file has no requests."))
    return lines, errors
