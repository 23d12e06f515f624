"""A multipart/form-data upload (an audio file for vLLM's transcriptions) read only as far as its `model`
field, so the request can be routed while the rest of the body still streams in from the client.

python-multipart's streaming parser reads the parts; the bytes read so far are kept (the head, replayed to
whoever takes the body next) and the rest is handed on as it comes, still counted against the body limit
and its deadline. A client that sends `model` before its file (as the OpenAI SDKs and curl -F in that order
do) has only a few hundred bytes read ahead; one that sends it after the file has the file read first.
"""

from __future__ import annotations

from typing import Protocol

from python_multipart.multipart import (
    MultipartParseError,
    MultipartParser,
    parse_options_header,
)

from gateway.errors import InvalidRequest


class BodyStream(Protocol):
    """The request body as it arrives (gateway.middleware.body.BodyStream)."""

    more: bool

    async def next(self) -> bytes: ...


_FIELD_BYTES = 1024  # a text field longer than this is not kept (only model and stream are looked at)


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a multipart/form-data body, or None for any other content type."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    return boundary if kind == b"multipart/form-data" and boundary else None


class FormStart:
    """The parts of a form seen so far: its short text fields, and where the `model` field's value lies."""

    def __init__(self, boundary: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.model_span: tuple[int, int] | None = None
        self.done = False  # the model field has been read whole
        self.models = 0  # `model` fields seen (the whole body is read through this parser, to its end)
        self._fed = 0  # bytes fed before the current chunk
        self._header: list[bytes] = [b"", b""]
        self._value: list[bytes] = []
        self._name: str | None = None
        self._is_file = False
        self._span: list[int] = []
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_begin": self._header_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError:
            raise InvalidRequest("The multipart/form-data body is malformed.") from None
        self._fed += len(chunk)
        if self.models > 1:  # routed by the first, served by the last: refused, wherever the second comes
            raise InvalidRequest("The form has more than one `model` field.", param="model")

    def follow(self, chunk: bytes) -> None:
        """A chunk of the rest of the body, as it streams on: only its field names are looked at now."""
        if chunk:
            self.done = True  # no field is kept past the model's
            self.feed(chunk)

    def _part_begin(self) -> None:
        self._name, self._is_file, self._value, self._span = None, False, [], []

    def _header_begin(self) -> None:
        self._header = [b"", b""]  # name and value, each given in pieces when a chunk ends inside them

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        if self._header[0] == b"content-disposition":
            _, options = parse_options_header(self._header[1])
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            self._is_file = b"filename" in options

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file or self._name is None or sum(map(len, self._value)) > _FIELD_BYTES:
            return
        self._value.append(data[start:end])
        if not self._span:
            self._span = [self._fed + start, self._fed + end]
        self._span[1] = self._fed + end

    def _part_end(self) -> None:
        if self._name == "model":
            self.models += 1
        if self._is_file or self._name is None or self.done or sum(map(len, self._value)) > _FIELD_BYTES:
            return
        self.fields[self._name] = b"".join(self._value).decode("utf-8", "replace")
        if self._name == "model":
            start = self._span[0] if self._span else self._fed
            self.model_span = (start, self._span[1] if self._span else start)
            self.done = True


async def read_form_start(stream: BodyStream, boundary: bytes) -> tuple[FormStart, bytes]:
    """Read the body until its `model` field is whole (or the body ends): the form so far and its bytes."""
    form = FormStart(boundary)
    head: list[bytes] = []
    while not form.done and stream.more:
        chunk = await stream.next()
        head.append(chunk)
        form.feed(chunk)
    return form, b"".join(head)
