"""gateway.middleware.multipart: a form read only as far as its model field, fed in pieces of any size."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.middleware.multipart import FormStart, boundary_of

BOUNDARY = b"b0undary"


def _form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        extra = f'; filename="{filename}"' if filename else ""
        out += b'--%s\r\ncontent-disposition: form-data; name="%s"%s\r\n\r\n%s\r\n' % (
            BOUNDARY,
            name.encode(),
            extra.encode(),
            value,
        )
    return out + b"--%s--\r\n" % BOUNDARY


def _feed(body: bytes, size: int) -> FormStart:
    form = FormStart(BOUNDARY)
    for at in range(0, len(body), size):
        if form.done:
            break
        form.feed(body[at : at + size])
    return form


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_the_model_field_and_where_its_value_lies(size: int) -> None:
    body = _form(("stream", b"true", None), ("model", b"whisper-small", None), ("file", b"\0" * 5000, "a.wav"))
    form = _feed(body, size)
    assert form.done and form.fields == {"stream": "true", "model": "whisper-small"}
    assert form.model_span is not None
    start, end = form.model_span
    assert body[start:end] == b"whisper-small"


def test_a_model_after_the_file_is_found_after_it() -> None:
    body = _form(("file", b"x" * 3000, "a.wav"), ("model", b"m", None))
    form = _feed(body, 100)
    assert form.done and form.fields == {"model": "m"}


def test_a_form_without_a_model_reads_to_its_end_without_one() -> None:
    form = _feed(_form(("file", b"x", "a.wav")), 10)
    assert not form.done and "model" not in form.fields


@pytest.mark.parametrize("body", [b"not a form at all", b"--b0undary\r\n: no header name\r\n\r\n"])
def test_a_malformed_form_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        FormStart(BOUNDARY).feed(body)


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (b"multipart/form-data; boundary=abc", b"abc"),
        (b'multipart/form-data; boundary="a b"', b"a b"),
        (b"application/json", None),
        (b"multipart/form-data", None),
    ],
)
def test_boundary_of(content_type: bytes, boundary: bytes | None) -> None:
    assert boundary_of(content_type) == boundary
