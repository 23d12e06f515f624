"""A prompt's token ids for policy kv, as the engine will see them (chat template applied), and the cache of them.

The ids come from a local tokenizer of the model when the route names one, else from an instance's /tokenize.
Asking costs the router a round trip per request, so three kinds of answers are kept and reused:

- a prompt's own ids, for a retry or the same prompt again;
- a chat's previous turn (`router.kv_tokenize_reuse_turns`): its next turn, the messages so far plus an answer
  and a new question, is routed on the ids kept for the turn before, which start its own;
- a shared start (`router.kv_tokenize_shared_starts`): chats that differ only in their last message (a long
  system prompt or document, then a new question) are routed on the ids of what they share, everything before
  the last message. The first chat seen with a start is tokenized whole. The second, while the first one's
  ids are still kept, asks for the start's ids alone (without a generation prompt), keeps them if they begin
  the first chat's ids and make most of it, and is routed on them: one round trip, as for any new prompt.
  Not every chat template renders a start as the beginning of the whole (Gemma's folds the system prompt
  into the first user turn), and a start refused is not asked for again. The new last message's blocks are
  cached nowhere yet, so leaving them out costs the routing nothing.
  Whether a start begins its chat is the template's doing, and the template sees a start's shape (its
  messages' roles, the kinds of their content, their other fields), not its text: once a start of a shape
  has begun its chat's ids, a new start of that shape whose messages are longer than the last one is asked
  for alone at its first chat, and kept unchecked (a group of chats costs one round trip, not two); a shape
  whose start did not begin its chat is not asked for alone again.

A kept answer is a `Prompt`: the ids and their block keys at the fleet's block sizes, so a prompt seen again
(a retry, a chat whose start or previous turn is kept) is neither tokenized nor keyed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine_adapters.base import RouteRequest
from engine_adapters.openai_http import OpenAIHttpAdapter
from gateway.errors import GatewayError
from gateway.routing.kv_index import block_keys
from gateway.settings import RouterSettings

log = logging.getLogger(__name__)

Asked = Callable[[], OpenAIHttpAdapter]  # the instance whose /tokenize is asked, called only when one is
_ENTRY_BYTES = 400  # an entry's own cost besides its arrays: its key, its tuple, its Prompt, their dicts
_REFUSED = b""  # a start whose ids do not begin its chats' ids, or could not be had (a digest is never empty)


class Prompt:
    """A prompt's token ids, and their block keys (kv_index.block_keys) at each block size asked, made once,
    with the holders the index last found for them (KvIndex.matched)."""

    __slots__ = ("ids", "_keys", "_holders")

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids: array[int] = array("q", ids)  # raises OverflowError past int64: not ids an engine makes
        self._keys: dict[int, array[int]] = {}
        self._holders: dict[int, list[dict[str, int]]] = {}

    def keys(self, block_size: int) -> array[int]:
        keys = self._keys.get(block_size)
        if keys is None:
            keys = self._keys[block_size] = array("q", block_keys(self.ids, block_size))
        return keys

    def holders(self, block_size: int) -> list[dict[str, int]]:
        return self._holders.setdefault(block_size, [])

    def nbytes(self) -> int:
        """What keeping it costs, as counted against router.kv_tokenize_cache_bytes (8 bytes an id, a key and a
        reference to a key's holders)."""
        keyed = sum(map(len, self._keys.values())) + sum(map(len, self._holders.values()))
        return _ENTRY_BYTES + 8 * (len(self.ids) + keyed)


@dataclass(frozen=True, slots=True)
class _Digests:
    """Digests of what a request's prompt can be routed on (the cache's keys, never the prompt itself)."""

    whole: bytes  # the body /tokenize is asked for the prompt
    # A chat's next turn (its messages so far, an answer, a new question) can be routed on the ids kept for
    # the turn before, all but the last two messages with the generation prompt: in the usual chat templates
    # those begin this turn's own ids, and reach past everything an instance may hold of the session but the
    # last answer. (Not kept under this turn's key, so the turn after asks again: never a turn further back.)
    previous: bytes | None
    start: bytes | None  # a chat's messages before a last one from the user, without the generation prompt
    start_most: bool = False  # the start's messages, as JSON, are longer than the last one: most of the chat


def _digests(request: RouteRequest) -> _Digests:
    """All three in one pass over the messages (each rendered once, and hashed once): a digest of each
    message's JSON in turn, copied where the start and the previous turn end. JSON has no bare newline, so
    the separators make any two different lists of messages hash different text."""
    messages = request.messages
    if messages is None:
        return _Digests(hashlib.sha256(b"prompt\n" + orjson.dumps(request.prompt)).digest(), None, None)
    running = hashlib.sha256(b"chat\n")
    previous = start = None
    last, before = len(messages) - 1, 0
    for at, message in enumerate(messages):
        if at == last - 1 and at >= 1 and message.get("role") == "assistant":
            previous = _closed(running, generation_prompt=True)
        if at == last and at >= 1 and message.get("role") == "user":
            start = _closed(running, generation_prompt=False)
        rendered = orjson.dumps(message)
        running.update(rendered)
        running.update(b"\n")
        before += len(rendered)
    most = start is not None and before > 2 * len(rendered)  # `before` counts the last message too
    return _Digests(_closed(running, generation_prompt=True), previous, start, most)


def _shape(messages: list[dict[str, Any]]) -> tuple[tuple[Any, ...], ...]:
    """What a chat template sees of messages besides their text: each one's role, its content's kind, its
    other fields' names."""
    return tuple(
        (m.get("role"), type(m.get("content")).__name__, *sorted(k for k in m if k not in ("role", "content")))
        for m in messages
    )


def _closed(running: Any, generation_prompt: bool) -> bytes:
    done = running.copy()
    done.update(b"+" if generation_prompt else b"-")
    return done.digest()


def _chat_body(messages: list[dict[str, Any]], generation_prompt: bool = True) -> dict[str, Any]:
    return {"messages": messages, "add_generation_prompt": generation_prompt}


class PromptTokens:
    """A prompt's token ids, from a local tokenizer or an instance's /tokenize; recent answers are kept.

    The cache is bounded three ways, all settings: entries (kv_tokenize_cache_size), bytes
    (kv_tokenize_cache_bytes: 8 a token id, a block key or a holders reference, plus _ENTRY_BYTES an entry) and
    age (kv_tokenize_cache_ttl_s: entries are dropped oldest first on every call, looked up or not). An entry
    is keyed by a digest of the messages (or prompt) /tokenize is asked, never the prompt itself, and a
    prompt's entry is dropped again when the request it was made for fails (`forget`): a client sending
    prompts an instance refuses pins nothing here. The starts seen (two digests each) are bounded by
    kv_tokenize_cache_size too."""

    def __init__(self, settings: RouterSettings, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.timeout_s = settings.kv_tokenize_timeout_s
        self.ttl_s = settings.kv_tokenize_cache_ttl_s
        self.size = settings.kv_tokenize_cache_size
        self.max_bytes = settings.kv_tokenize_cache_bytes
        self.reuse_turns = settings.kv_tokenize_reuse_turns
        self.shared_starts = settings.kv_tokenize_shared_starts
        self.bytes = 0  # what the cache holds now, as counted against max_bytes
        self._cache: OrderedDict[bytes, tuple[float, Prompt, int]] = OrderedDict()  # (kept at, it, its bytes)
        # A start's digest -> the digest of the first chat seen with it (whose ids are kept), or _REFUSED.
        self._starts: OrderedDict[bytes, bytes] = OrderedDict()
        # A start's shape -> whether the last start of it checked began its chat's ids.
        self._shapes: OrderedDict[tuple[Any, ...], bool] = OrderedDict()

    @staticmethod
    def _body(request: RouteRequest) -> dict[str, Any]:
        return _chat_body(request.messages) if request.messages is not None else {"prompt": request.prompt}

    async def prompt(self, request: RouteRequest, asked: Asked, block_sizes: Sequence[int] = ()) -> Prompt | None:
        """The request's prompt, keyed at `block_sizes` (those of the instances routed on) if it is kept;
        `asked()` gives the instance whose /tokenize is asked, when one is."""
        if request.messages is None and not isinstance(request.prompt, str):
            return _checked(request.prompt) if request.prompt else None  # sent as token ids: never kept
        self._expire(time.monotonic())
        digests = _digests(request)
        kept = self._kept(digests.whole, block_sizes)
        if kept is None and self.reuse_turns and digests.previous is not None:
            kept = self._kept(digests.previous, block_sizes)
        start = digests.start if self.shared_starts and kept is None else None
        if start is not None:
            kept = self._kept(start, block_sizes) or await self._learn_start(digests, request, asked, block_sizes)
        if kept is not None:
            return kept
        found = await self._tokenize(self._body(request), request, asked)
        if found is None:
            return None
        if start is not None:
            self._seen(start, digests.whole)
        return self._keep(digests.whole, found, block_sizes)

    def _kept(self, key: bytes, block_sizes: Sequence[int]) -> Prompt | None:
        """A kept prompt, keyed at `block_sizes` (counted again when that made keys)."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        kept_at, prompt, counted = entry
        for size in block_sizes:
            prompt.keys(size)
        if (cost := prompt.nbytes()) != counted:  # keyed at a new size, or matched: counted again, as old as it was
            self._cache[key] = (kept_at, prompt, cost)
            self.bytes += cost - counted
            self._trim()
        return prompt

    def _seen(self, start: bytes, whole: bytes) -> None:
        """A chat with this start was tokenized whole (its ids kept under `whole`), unless the start is refused."""
        _remember(self._starts, start, _REFUSED if self._starts.get(start) == _REFUSED else whole, self.size)

    async def _learn_start(
        self, digests: _Digests, request: RouteRequest, asked: Asked, block_sizes: Sequence[int]
    ) -> Prompt | None:
        """The ids of a start that an earlier chat, still kept, had too: asked for once, and kept if they begin
        that chat's ids and make most of it (a template that renders the start otherwise alone, like Gemma's
        folding its system prompt into the first user turn, would give a few ids that route on nothing); a
        start refused is not asked for again. A start of a shape that has begun its chat before is asked for
        at its first chat, and kept unchecked when its messages make most of the chat."""
        start = digests.start
        assert start is not None and request.messages
        first = self._starts.get(start)  # the digest of the first chat seen with it, or _REFUSED
        if first == _REFUSED:
            return None
        head = request.messages[:-1]
        shape = _shape(head)
        trusted = self._shapes.get(shape)
        earlier = self._cache.get(first) if first is not None else None
        if trusted is False or (earlier is None and not (trusted and digests.start_most)):
            return None
        found = await self._tokenize(_chat_body(head, generation_prompt=False), request, asked)
        if earlier is None:  # a start of a trusted shape, at its first chat
            return self._keep(start, found, block_sizes) if found is not None else None
        if found is not None:
            whole = earlier[1].ids
            ok = 2 * len(found.ids) > len(whole) and whole[: len(found.ids)] == found.ids
            if ok or digests.start_most:  # not ok though its messages make most of the chat: the template's doing
                _remember(self._shapes, shape, ok, self.size)
            if ok:
                return self._keep(start, found, block_sizes)
        self._starts[start] = _REFUSED
        log.debug("a shared start's ids do not make most of its chat's ids: its chats are tokenized whole")
        return None

    def forget(self, request: RouteRequest) -> None:
        """The request these ids were for failed: they are not kept for the next."""
        if self._cache and (request.messages is not None or isinstance(request.prompt, str)):
            self._drop(_digests(request).whole)

    def _keep(self, key: bytes, prompt: Prompt, block_sizes: Sequence[int]) -> Prompt:
        """Key `prompt` at `block_sizes` and keep it under `key`, if it fits."""
        for size in block_sizes:
            prompt.keys(size)
        cost = prompt.nbytes()
        self._drop(key)
        if self.size == 0 or cost > self.max_bytes:
            return prompt
        self._cache[key] = (time.monotonic(), prompt, cost)
        self.bytes += cost
        self._trim()
        return prompt

    def _trim(self) -> None:
        while len(self._cache) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self._cache)))

    def _drop(self, key: bytes) -> None:
        if (entry := self._cache.pop(key, None)) is not None:
            self.bytes -= entry[2]

    def _expire(self, now: float) -> None:
        while self._cache:
            oldest = next(iter(self._cache))
            if now - self._cache[oldest][0] < self.ttl_s:
                return
            self._drop(oldest)

    def status(self) -> tuple[int, int]:
        """(entries, bytes) kept now."""
        return len(self._cache), self.bytes

    async def _tokenize(self, body: dict[str, Any], request: RouteRequest, asked: Asked) -> Prompt | None:
        ids = self._local(body) if self.tokenizer is not None else await self._remote(body, request, asked())
        return _checked(ids) if ids is not None else None

    def _local(self, body: dict[str, Any]) -> list[int] | None:
        """As the engine renders it (engine_adapters.vllm_local.prompt_ids): the template writes BOS itself."""
        try:
            if "messages" in body:
                text = self.tokenizer.apply_chat_template(
                    body["messages"], tokenize=False, add_generation_prompt=body["add_generation_prompt"]
                )
                return list(self.tokenizer.encode(text, add_special_tokens=False))
            return list(self.tokenizer.encode(body["prompt"]))
        except Exception as exc:  # a template that cannot render these messages: the instance will say so
            log.debug("local tokenizer failed: %s", exc)
            return None

    async def _remote(
        self, body: dict[str, Any], request: RouteRequest, instance: OpenAIHttpAdapter
    ) -> list[int] | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                # Under the request's model name only: the routing's own call, not the client's request.
                answer = await instance.forward(RouteRequest(request.request_id, request.model), "/tokenize", body)
            tokens = orjson.loads(answer).get("tokens")
        except (GatewayError, TimeoutError, ValueError, AttributeError) as exc:
            log.debug("/tokenize for routing failed: %s", exc)
            return None
        return tokens if isinstance(tokens, list) else None  # ints, as Prompt checks


def _remember(mapping: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Set `key` as the newest entry of `mapping`, which keeps its `size` newest."""
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > size:
        mapping.popitem(last=False)


def _checked(ids: Iterable[int]) -> Prompt | None:
    """A Prompt of `ids`, None unless they are ints within int64, as an engine makes."""
    try:
        return Prompt(ids)
    except (TypeError, OverflowError):
        return None


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with transformers when it is installed; None otherwise."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        log.warning("kv_tokenizer %s: transformers is not installed; tokenizing on the instances", path)
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        log.warning("kv_tokenizer %s cannot be loaded (%s); tokenizing on the instances", path, exc)
        return None
