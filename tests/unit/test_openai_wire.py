"""engine_adapters.openai_wire: the public model name written back into a passed-through answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine_adapters.openai_wire import ModelRename, public_model_answer

RENAME = ModelRename("upstream", "public")


def _answer(pieces: list[bytes], content_type: bytes, rename: ModelRename | None = RENAME) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def collect() -> list[bytes]:
        return [piece async for piece in public_model_answer(source(), content_type, rename)]

    return asyncio.run(collect())


def test_a_stream_renames_its_first_event_even_split_across_pieces_and_nothing_after() -> None:
    start = b'event: message_start\ndata: {"message": {"model": "upstream"}}\n\n'
    later = b'event: content_block_delta\ndata: {"model": "upstream"}\n\n'
    pieces = [start[:30], start[30:-1], start[-1:] + later[:5], later[5:]]
    out = b"".join(_answer(pieces, b"text/event-stream"))
    assert out == start.replace(b'"model": "upstream"', b'"model":"public"') + later


def test_a_json_answer_is_renamed_whole_and_other_answers_pass_as_they_come() -> None:
    assert _answer([b'{"model": "ups', b'tream", "a": 1}'], b"application/json") == [b'{"model":"public", "a": 1}']
    pieces = [b'{"model": "upstream"}']
    assert _answer(pieces, b"audio/wav") == pieces
    assert _answer(pieces, b"application/json", None) == pieces
