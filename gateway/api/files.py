"""/v1/files: upload (multipart, streamed into the store as it arrives), list, retrieve, content, delete.

A file belongs to the key that uploaded it (its name; one anonymous owner where no keys are configured):
another key's file is a 404, as a file that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.responses import Response, StreamingResponse

from gateway.api.common import ERROR_RESPONSES, app_state, json_response, list_page
from gateway.errors import InvalidRequest, StoreUnavailable
from gateway.middleware.body import ClientLeft
from gateway.middleware.context import request_info
from gateway.middleware.multipart import boundary_of
from gateway.protocol.batches import UPLOAD_FORM, UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from gateway.store.files import FileStore, FileWriter

router = APIRouter()


def owner_of(request: Request) -> str:
    """Who owns what a request makes: its key's name; "" (one owner) where no keys are configured."""
    return request_info(request.scope).key_name or ""


def _files(request: Request) -> FileStore:
    files = app_state(request).files
    if files is None:
        raise StoreUnavailable("The file store is not configured.")
    return files


class _Form:
    """The upload's parts as they come: the `file` part's bytes go to the writer, short fields are kept."""

    def __init__(self, boundary: bytes, writer: FileWriter) -> None:
        self.writer = writer
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.files = 0
        self.out: list[bytes] = []  # the file's bytes from the last feed, written after it
        self._name, self._is_file, self._value = "", False, bytearray()
        self._header = [b"", b""]
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_begin": lambda: self._header.__setitem__(slice(None), [b"", b""]),
                "on_header_field": lambda data, start, end: self._add(0, data[start:end].lower()),
                "on_header_value": lambda data, start, end: self._add(1, data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def _add(self, index: int, data: bytes) -> None:
        self._header[index] += data

    def _begin(self) -> None:
        self._name, self._is_file, self._value = "", False, bytearray()

    def _header_end(self) -> None:
        if self._header[0] == b"content-disposition":
            _, options = parse_options_header(self._header[1])
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options and self._name == "file":
                self._is_file = True
                self.files += 1
                self.filename = options[b"filename"].decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if self.files == 1:
                self.out.append(data[start:end])
        elif len(self._value) <= 1024:
            self._value += data[start:end]

    def _end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    async def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError:
            raise InvalidRequest("The multipart/form-data body is malformed.") from None
        for data in self.out:
            await self.writer.write(data)
        self.out.clear()


async def _receive_file(request: Request, form: _Form, cap: int) -> None:
    async for chunk in request.stream():
        await form.feed(chunk)
        if form.writer.size > cap:
            raise InvalidRequest(f"The file is larger than {cap} bytes.", param="file")
    form.parser.finalize()


@router.post(
    "/v1/files",
    response_model=FileObject,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_FORM}}}},
)
async def upload_file(request: Request) -> Response:
    content_type = request.headers.get("content-type", "").encode("latin-1")
    boundary = boundary_of(content_type) if content_type else None
    if boundary is None:
        raise InvalidRequest("Upload the file as multipart/form-data with fields `file` and `purpose`.")
    state = app_state(request)
    writer = await _files(request).open(owner_of(request))
    form = _Form(boundary, writer)
    try:
        try:
            await _receive_file(request, form, state.settings.batch.max_file_bytes)
        except ClientLeft:
            raise InvalidRequest("The upload ended before its last byte.") from None
        purpose = form.fields.get("purpose")
        if form.files != 1 or form.filename is None:
            raise InvalidRequest("The form must hold exactly one `file`.", param="file")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose")
        stored = await writer.close(purpose, form.filename[:512] or "upload")
    except BaseException:
        await writer.abort()
        raise
    return json_response(stored.object())


@router.get("/v1/files", response_model=FileList, responses=ERROR_RESPONSES)
async def list_files(
    request: Request,
    limit: int = Query(default=10000, ge=1, le=10000),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Response:
    page, more = await _files(request).page(owner_of(request), limit, after, order, purpose)
    data = [stored.object() for stored in page]
    return json_response(list_page(data, more))


@router.get("/v1/files/{file_id}", response_model=FileObject, responses=ERROR_RESPONSES)
async def retrieve_file(file_id: str, request: Request) -> Response:
    return json_response((await _files(request).get(owner_of(request), file_id)).object())


@router.get(
    "/v1/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"application/octet-stream": {}}, "description": "The bytes"}},
)
async def file_content(file_id: str, request: Request) -> Response:
    chunks: AsyncIterator[bytes] = await _files(request).content(owner_of(request), file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=ERROR_RESPONSES)
async def delete_file(file_id: str, request: Request) -> Response:
    await _files(request).delete(owner_of(request), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})
