"""Follow one instance's KV events (vLLM's ZMQ publisher) into the route's KvIndex.

The wire, as vLLM's `kv_events_config` publisher writes it: a PUB socket sends (topic, sequence number as
8 bytes big-endian, payload) per batch; the payload is msgpack, a batch [ts, events, dp_rank] whose events
are maps tagged by `type` (BlockStored, BlockRemoved, AllBlocksCleared). A ROUTER socket (the replay
endpoint) answers a request for the batches from a sequence number on, still in its buffer, then an end
marker (sequence -1).

A batch that leaves a gap, or comes from a restarted publisher, starts a re-sync: the missed batches are
asked of the replay endpoint; if it has them all they are applied in order and nothing is lost. Otherwise
(no replay endpoint, or its buffer no longer reaches back) the instance's blocks are dropped from the index
and it is rebuilt from the batches that can still be had.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Union, cast
from urllib.parse import urlsplit

import httpx
import msgspec
import zmq
import zmq.asyncio

from gateway.routing.kv_index import Cleared, Event, KvIndex, Removed, Stored, Verdict

log = logging.getLogger(__name__)

END_SEQ = -1
REPLAY_TIMEOUT_S = 5.0
GPU_MEDIA = (None, "GPU")  # blocks offloaded to CPU or storage are not in the engine's prefix cache


# What an engine can send, and no more: a batch with a value past these is unreadable (counted, skipped), so no
# value can stop the subscriber (a token id past int64) or grow an index entry (a hash of kilobytes): each entry
# of the index then costs a bounded number of bytes, and router.kv_max_blocks bounds the whole.
_TokenId = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# vLLM's hash: an int (msgpack holds at most 64 bits, signed or not: only a key here, never packed) or 32 bytes.
_Hash = Union[int, Annotated[bytes, msgspec.Meta(max_length=64)]]  # noqa: UP007
_Name = Annotated[str, msgspec.Meta(max_length=256)]


class _BlockStored(msgspec.Struct, tag="BlockStored"):
    block_hashes: list[_Hash]
    parent_block_hash: Union[_Hash, None]  # noqa: UP007
    token_ids: list[_TokenId]
    block_size: Annotated[int, msgspec.Meta(ge=1, le=2**20)]
    lora_name: Union[_Name, None] = None  # noqa: UP007
    medium: Union[_Name, None] = None  # noqa: UP007
    group_idx: Union[_TokenId, None] = None  # noqa: UP007


class _BlockRemoved(msgspec.Struct, tag="BlockRemoved"):
    block_hashes: list[_Hash]
    medium: Union[_Name, None] = None  # noqa: UP007
    group_idx: Union[_TokenId, None] = None  # noqa: UP007


class _AllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared"):
    pass


class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[Union[_BlockStored, _BlockRemoved, _AllBlocksCleared]]  # noqa: UP007
    data_parallel_rank: Union[int, None] = None  # noqa: UP007


_decoder = msgspec.msgpack.Decoder(_Batch)


def decode(payload: bytes) -> tuple[float, list[Event]]:
    """A batch's clock and its events, as the index takes them; raises msgspec.DecodeError on a bad payload."""
    batch = _decoder.decode(payload)
    events: list[Event] = []
    for raw in batch.events:
        if isinstance(raw, _BlockStored):
            if raw.medium in GPU_MEDIA:
                events.append(
                    Stored(
                        raw.block_hashes,
                        raw.parent_block_hash,
                        raw.token_ids,
                        raw.block_size,
                        raw.lora_name,
                        raw.group_idx,
                    )
                )
        elif isinstance(raw, _BlockRemoved):
            if raw.medium in GPU_MEDIA:
                events.append(Removed(raw.block_hashes, raw.group_idx))
        else:
            events.append(Cleared())
    return batch.ts, events


def endpoint_for(endpoint: str, instance_url: str) -> str:
    """A publisher's bind address (tcp://*:5557, tcp://0.0.0.0:5557) as its subscribers reach it: the
    instance's own host in place of the wildcard."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or parts.hostname not in ("*", "0.0.0.0", "::", None):
        return endpoint
    host = urlsplit(instance_url).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{parts.port}"


async def discover_endpoints(
    client: httpx.AsyncClient, instance_url: str, model: str, headers: dict[str, str]
) -> tuple[str, str | None] | None:
    """The instance's KV events endpoints from its /v1/models entry (`kv_events`), if it publishes any."""
    try:
        response = await client.get(f"{instance_url}/v1/models", headers=headers)
        cards = response.json().get("data") or [] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for card in cards:
        info = card.get("kv_events") if isinstance(card, dict) and card.get("id") == model else None
        if isinstance(info, dict) and isinstance(info.get("endpoint"), str):
            replay = info.get("replay_endpoint")
            return (
                endpoint_for(info["endpoint"], instance_url),
                endpoint_for(replay, instance_url) if isinstance(replay, str) else None,
            )
    return None


_Resync = tuple[Verdict, int, tuple[float, list[Event]]]  # why, the batch that showed it, that batch decoded
_POLLIN, _EVENTS, _NOBLOCK = int(zmq.POLLIN), int(zmq.EVENTS), int(zmq.NOBLOCK)  # ints: enum flags cost a call


class KvSubscriber:
    """One instance's events, applied to the index as they come."""

    def __init__(
        self, index: KvIndex, instance: str, endpoint: str, replay_endpoint: str | None, context: zmq.asyncio.Context
    ) -> None:
        self.index, self.instance = index, instance
        self.endpoint, self.replay_endpoint = endpoint, replay_endpoint
        self.context = context
        self.decode_errors = 0

    async def run(self) -> None:
        """Apply the batches as they come, until cancelled (a socket error is raised). A route follows every
        instance, so this runs for every message of every one: the socket is a plain one, read in the loop's
        own callback when its descriptor is ready, every batch waiting applied there and then (pyzmq's
        asyncio sockets, or a task woken per message, cost the router about twice as much a message). A
        batch that needs a re-sync stops the reading until the re-sync is done: what comes meanwhile waits
        in the socket, in order."""
        sub = zmq.Socket(self.context, zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.endpoint)
        loop = asyncio.get_running_loop()
        descriptor = cast(int, sub.getsockopt(zmq.FD))
        try:
            while True:
                wanted: asyncio.Future[_Resync] = loop.create_future()
                loop.add_reader(descriptor, self._read, sub, wanted)
                self._read(sub, wanted)  # what came before the reader was added
                resync = await wanted
                loop.remove_reader(descriptor)
                await self.resync(*resync)
        finally:
            loop.remove_reader(descriptor)
            sub.close()

    def _read(self, sub: zmq.Socket[bytes], wanted: asyncio.Future[_Resync]) -> None:
        """Apply every batch waiting in the socket (ZMQ's descriptor only says "look": EVENTS tells what there
        is); one that needs a re-sync, or a socket error, ends the reading and goes to `run` by `wanted`
        (which takes the reader away)."""
        try:
            while not wanted.done() and cast(int, sub.getsockopt(_EVENTS)) & _POLLIN:
                frames = sub.recv_multipart(_NOBLOCK)
                if len(frames) == 3 and (resync := self.take(int.from_bytes(frames[1], "big", signed=True), frames[2])):
                    wanted.set_result(resync)
        except zmq.ZMQError as exc:
            wanted.set_exception(exc)

    def take(self, seq: int, payload: bytes) -> _Resync | None:
        """Apply one batch; what a re-sync needs, when the batch does not follow the last one applied."""
        batch = self._decode(payload)
        if batch is None:
            return None
        try:
            verdict = self.index.apply(self.instance, seq, *batch)
        except (ValueError, OverflowError, TypeError) as exc:  # past what decode checks: unreadable all the same
            self._unreadable(exc)
            self.index.drop(self.instance, next_seq=seq + 1)  # half applied: what it holds is not known now
            return None
        return (verdict, seq, batch) if verdict in (Verdict.GAP, Verdict.RESTART) else None

    async def resync(self, verdict: Verdict, seq: int, live: tuple[float, list[Event]]) -> None:
        self.index.resyncs += 1
        start = 0 if verdict is Verdict.RESTART else self.index.next_seq(self.instance)
        log.info("kv events of %s: %s at batch %d; re-syncing from %d", self.instance, verdict.value, seq, start)
        replayed = [(s, b) for s, p in await self.replay(start) if s < seq and (b := self._decode(p)) is not None]
        batches = [*replayed, (seq, live)]
        if verdict is Verdict.RESTART or batches[0][0] != start:
            # What came before is gone (a new publisher, or a buffer that no longer reaches back).
            self.index.drop(self.instance, next_seq=batches[0][0])
        for number, (ts, events) in batches:
            if self.index.apply(self.instance, number, ts, events) is Verdict.GAP:
                self.index.drop(self.instance, next_seq=number)  # a hole in the replay itself
                self.index.apply(self.instance, number, ts, events)

    async def replay(self, start: int) -> list[tuple[int, bytes]]:
        """The batches from `start` on that the publisher still buffers; none without a replay endpoint."""
        if self.replay_endpoint is None:
            return []
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        out: list[tuple[int, bytes]] = []
        try:
            await dealer.send_multipart((b"", start.to_bytes(8, "big")))
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                while True:
                    frames = await dealer.recv_multipart()
                    if len(frames) != 4:
                        continue
                    seq = int.from_bytes(frames[2], "big", signed=True)
                    if seq == END_SEQ:
                        return out
                    out.append((seq, frames[3]))
        except TimeoutError:
            log.warning("kv events of %s: no whole replay within %g s", self.instance, REPLAY_TIMEOUT_S)
            return out
        finally:
            dealer.close()

    def _decode(self, payload: bytes) -> tuple[float, list[Event]] | None:
        try:
            return decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._unreadable(exc)
            return None

    def _unreadable(self, exc: Exception) -> None:
        self.decode_errors += 1
        if self.decode_errors == 1:
            log.warning("kv events of %s: a batch we cannot read (%s)", self.instance, exc)


def new_context() -> Any:
    return zmq.asyncio.Context()
