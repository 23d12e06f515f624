"""Plumbing for streams of engine chunks, shared by the generating services: several prompts' streams merged
into one, and a stream's first chunk pulled early so that a failure before any output is a plain HTTP error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from engine_adapters.base import Chunk


async def merged(streams: list[AsyncIterator[Chunk]], index_offsets: list[int]) -> AsyncIterator[Chunk]:
    """Interleave several prompts' streams; choice indices are shifted so they stay unique."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield chunk
        return
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(slot: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((slot, chunk))
            await queue.put((slot, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((slot, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            slot, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                item.index += index_offsets[slot]
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_and_rest(stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Pull the first chunk now, so errors before any output become a plain HTTP error."""
    first = await anext(stream)

    async def rest() -> AsyncIterator[Chunk]:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            yield first
            async for chunk in stream:
                yield chunk

    return rest()
