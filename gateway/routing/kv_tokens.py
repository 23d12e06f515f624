"""A prompt's token ids for policy kv, as the engine will see them (chat template applied), and the cache of them.

The ids come from a local tokenizer of the model when the route names one, else from an instance's /tokenize.
Asking costs the router a round trip per request, so three kinds of answers are kept and reused:

- a prompt's own ids, for a retry or the same prompt again;
- a chat's previous turn (`router.kv_tokenize_reuse_turns`): its next turn, the messages so far plus an answer
  and a new question, is routed on the ids kept for the turn before, which start its own;
- a shared start (`router.kv_tokenize_shared_starts`): chats that differ only in their last message (a long
  system prompt or document, then a new question) are routed on the ids of what they share, everything before
  the last message. The second chat seen with a start asks for the start's ids once (without a generation
  prompt) and keeps them if they begin the whole prompt's ids and make most of it; not every chat template
  renders a start as the beginning of the whole (Gemma's folds the system prompt into the first user turn),
  and a start refused is not asked again. The new last message's blocks are cached nowhere yet, so leaving
  them out costs the routing nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from array import array
from collections import OrderedDict
from typing import Any

import orjson

from engine_adapters.base import RouteRequest
from engine_adapters.openai_http import OpenAIHttpAdapter
from gateway.errors import GatewayError
from gateway.settings import RouterSettings

log = logging.getLogger(__name__)

_ENTRY_BYTES = 160  # an entry's own cost besides its ids: its key, its tuple, its place in the dict
_REFUSED = -1  # a start whose ids do not begin the whole prompt's, or could not be had


def _entry_bytes(ids: array[int]) -> int:
    return _ENTRY_BYTES + ids.itemsize * len(ids)


def _digest(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(orjson.dumps(body)).digest()


def _chat_body(messages: list[dict[str, Any]], generation_prompt: bool = True) -> dict[str, Any]:
    return {"messages": messages, "add_generation_prompt": generation_prompt}


class PromptTokens:
    """A prompt's token ids, from a local tokenizer or an instance's /tokenize; recent answers are kept.

    The cache is bounded three ways, all settings: entries (kv_tokenize_cache_size), bytes of token ids
    (kv_tokenize_cache_bytes: 8 a token, plus _ENTRY_BYTES an entry) and age (kv_tokenize_cache_ttl_s: entries
    are dropped oldest first on every call, looked up or not). An entry is keyed by a digest of the body
    /tokenize is asked, never the prompt itself, and a prompt's entry is dropped again when the request it was
    made for fails (`forget`): a client sending prompts an instance refuses pins nothing here. The starts seen
    (a digest and a count each) are bounded by kv_tokenize_cache_size too."""

    def __init__(self, settings: RouterSettings, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.timeout_s = settings.kv_tokenize_timeout_s
        self.ttl_s = settings.kv_tokenize_cache_ttl_s
        self.size = settings.kv_tokenize_cache_size
        self.max_bytes = settings.kv_tokenize_cache_bytes
        self.reuse_turns = settings.kv_tokenize_reuse_turns
        self.shared_starts = settings.kv_tokenize_shared_starts
        self.bytes = 0  # what the cache holds now, as counted against max_bytes
        self._cache: OrderedDict[bytes, tuple[float, array[int]]] = OrderedDict()  # oldest first
        self._starts: OrderedDict[bytes, int] = OrderedDict()  # a start's digest -> chats seen with it, or _REFUSED

    @staticmethod
    def _body(request: RouteRequest) -> dict[str, Any]:
        return _chat_body(request.messages) if request.messages is not None else {"prompt": request.prompt}

    async def ids(self, request: RouteRequest, instance: OpenAIHttpAdapter) -> list[int] | None:
        if request.messages is None and not isinstance(request.prompt, str):
            return list(request.prompt) if request.prompt else None  # already token ids
        self._expire(time.monotonic())
        body = self._body(request)
        key = _digest(body)
        if (hit := self._cache.get(key)) is not None:
            return hit[1].tolist()
        if self.reuse_turns and (earlier := self._previous_turn(request)) is not None:
            return earlier
        start = self._start(request) if self.shared_starts else None
        if start is not None and (kept := self._cache.get(start[0])) is not None:
            return kept[1].tolist()
        ids = await self._tokenize(body, request, instance)
        if ids is not None:
            self._keep(key, ids)
            if start is not None and self._seen_again(start[0]):
                await self._learn_start(*start, ids, request, instance)
        return ids

    def _previous_turn(self, request: RouteRequest) -> list[int] | None:
        """A chat's next turn (its messages so far, an answer, a new question) routed on the ids kept for the
        turn before: with the generation prompt, those are the start of this turn's own ids in the usual
        chat templates, and they reach past everything an instance may hold of the session but the last
        answer. Not kept under this turn's key, so the turn after asks again and the ids never fall more
        than one turn behind."""
        messages = request.messages
        if not messages or len(messages) < 3 or messages[-2].get("role") != "assistant":
            return None
        earlier = self._cache.get(_digest(_chat_body(messages[:-2])))
        return earlier[1].tolist() if earlier is not None else None

    @staticmethod
    def _start(request: RouteRequest) -> tuple[bytes, dict[str, Any]] | None:
        """A chat's start, all its messages before a last one from the user: its digest and its /tokenize body."""
        messages = request.messages
        if not messages or len(messages) < 2 or messages[-1].get("role") != "user":
            return None
        body = _chat_body(messages[:-1], generation_prompt=False)
        return _digest(body), body

    def _seen_again(self, start: bytes) -> bool:
        """Count a chat with this start; True the first time one is seen again (its ids are worth asking)."""
        seen = self._starts.pop(start, 0)
        self._starts[start] = seen if seen == _REFUSED else seen + 1
        while len(self._starts) > self.size:
            self._starts.popitem(last=False)
        return seen >= 1

    async def _learn_start(
        self, start: bytes, body: dict[str, Any], whole: list[int], request: RouteRequest, instance: OpenAIHttpAdapter
    ) -> None:
        """Ask for the start's ids; keep them if they begin `whole`, the ids of a chat with this start, and make
        most of it (a template that renders the start otherwise alone, like Gemma's folding its system prompt
        into the first user turn, would give a few ids that route on nothing)."""
        ids = await self._tokenize(body, request, instance)
        if ids is not None and 2 * len(ids) > len(whole) and whole[: len(ids)] == ids:
            self._keep(start, ids)
        else:
            self._starts[start] = _REFUSED
            log.debug("a shared start's ids do not begin its chats' ids: its chats are tokenized whole")

    def forget(self, request: RouteRequest) -> None:
        """The request these ids were for failed: they are not kept for the next."""
        if self._cache and (request.messages is not None or isinstance(request.prompt, str)):
            self._drop(_digest(self._body(request)))

    def _keep(self, key: bytes, ids: list[int]) -> None:
        try:
            packed = array("q", ids)
        except OverflowError:  # not ids an engine makes: used once, never kept
            return
        cost = _entry_bytes(packed)
        if self.size == 0 or cost > self.max_bytes:
            return
        self._drop(key)
        self._cache[key] = (time.monotonic(), packed)
        self.bytes += cost
        while len(self._cache) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self._cache)))

    def _drop(self, key: bytes) -> None:
        if (entry := self._cache.pop(key, None)) is not None:
            self.bytes -= _entry_bytes(entry[1])

    def _expire(self, now: float) -> None:
        while self._cache:
            oldest = next(iter(self._cache))
            if now - self._cache[oldest][0] < self.ttl_s:
                return
            self._drop(oldest)

    def status(self) -> tuple[int, int]:
        """(entries, bytes) kept now."""
        return len(self._cache), self.bytes

    async def _tokenize(
        self, body: dict[str, Any], request: RouteRequest, instance: OpenAIHttpAdapter
    ) -> list[int] | None:
        return self._local(body) if self.tokenizer is not None else await self._remote(body, request, instance)

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
        if not isinstance(tokens, list):
            return None
        try:
            array("q", tokens)  # token ids are ints (checked at C speed: this runs on every routed request)
        except (TypeError, OverflowError):
            return None
        return tokens


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
