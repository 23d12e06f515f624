"""Resumable streams: a routed stream that outlives the instance serving it (route setting resume_streams).

The whole path, in order:
1. RoutedAdapter.relay, for a route with resume_streams on and a streamed chat or completion, asks `refusal`
   whether the request can be continued faithfully. One that cannot (the reasons are REFUSALS) is relayed as
   before, splice included; it is only watched, so that a failure of it counts as outcome `refused`.
2. A resumable request goes to an instance with `stream_options.continuous_usage_stats` on, so each event
   carries the exact token counts so far, and with no Sink: the splice is off for it, since every event must
   pass through here to be read (the cost: each event is parsed and written again, about what the folding of a
   whole answer costs per event).
3. A Transcript reads each event before it is passed on: the answer's id and created, the text so far, the
   tokens so far, the prompt's tokens, whether a tool call or reasoning began, the finish reason. Usage the
   client did not ask for per chunk is taken out of the event again.
4. When the stream fails after its first event (the instance reset the connection, stalled past the idle
   timeout, ended early, or sent an error event), `continuation` builds the request again with the text so far
   as the answer's start: for chat, an assistant message with `continue_final_message`; for completions, the
   prompt with the text appended; `max_tokens` less the tokens already sent. It goes to the route again (with
   its retries before the first byte), on an instance that has not served this stream, at most max_attempts
   times per stream.
5. The continuation's events are written as more of the same stream: the first answer's id and created, no
   second role delta, the usage totals of the whole answer (the first prompt's tokens; all tokens generated).
   So the client sees one stream, one finish_reason, one usage event, one [DONE].
6. Each failure of a watched stream counts once in tokenyard_route_resumed_streams_total by outcome
   (resumed, failed, refused) and is logged.

This is the text route: the text so far is sent as text and tokenized again by the next instance, which at a
seam may split it into other tokens than were generated (rarely; greedy answers stay the same in the tests).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine_adapters.openai_wire import DONE
from gateway.errors import GatewayError, InvalidRequest
from gateway.protocol.lax import lax_int

log = logging.getLogger(__name__)

# A continuation opened on the route: the body to send, and the instances that served this stream so far.
Open = Callable[[dict[str, Any], set[str]], AsyncIterator[bytes]]

REFUSALS = {
    "n": "more than one choice (n or best_of above 1)",
    "logprobs": "logprobs: those of the text before the seam would not be the next instance's",
    "echo": "echo: the prompt would be echoed again",
    "beam": "beam search: its beams are not in the text sent",
    "structured": "structured output: the next instance's grammar would start from the beginning",
    "prompt": "a prompt that is not one string (token ids, several prompts), or a suffix",
    "messages": "a final assistant message whose content is not plain text",
    "tool_call": "a tool call's arguments half sent",
    "reasoning": "reasoning text half sent",
}


# The numbers a resumed stream reads (and a continuation rewrites), read as the engine reads them.
_COUNTS = ("n", "best_of", "max_tokens", "max_completion_tokens", "min_tokens")


def _count(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    return default if value is None else lax_int(value) or 0


def checked(chat: bool, body: dict[str, Any]) -> None:
    """A 400 for a body whose fields that resuming reads are not of the engine's types (never a crash here)."""
    for name in _COUNTS:
        if body.get(name) is not None and lax_int(body[name]) is None:
            raise InvalidRequest(f"{name} must be an integer.", param=name)
    if not isinstance(body.get("response_format") or {}, dict):
        raise InvalidRequest("response_format must be an object.", param="response_format")
    messages = body.get("messages")
    if chat and not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise InvalidRequest("messages must be a non-empty list of objects.", param="messages")


def refusal(chat: bool, body: dict[str, Any]) -> str | None:
    """Why this request cannot be continued on another instance (a key of REFUSALS), or None. Raises
    InvalidRequest for a body whose fields are not of the engine's types (`checked`)."""
    checked(chat, body)
    if _count(body, "n", 1) > 1 or _count(body, "best_of", 1) > 1:
        return "n"
    if body.get("logprobs") or body.get("top_logprobs") or body.get("prompt_logprobs") is not None:
        return "logprobs"
    if body.get("echo"):
        return "echo"
    if body.get("use_beam_search"):
        return "beam"
    if (body.get("response_format") or {}).get("type", "text") != "text" or body.get("structured_outputs"):
        return "structured"
    if chat:
        last = (body.get("messages") or [{}])[-1]
        final = body.get("continue_final_message") and last.get("role") == "assistant"
        return "messages" if final and not isinstance(last.get("content") or "", str) else None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return "prompt" if not isinstance(prompt, str) or body.get("suffix") else None


@dataclass
class Transcript:
    """What a stream has passed on so far, read from its events; it writes a continuation's events as more of it."""

    chat: bool
    continuous: bool  # the client asked for usage in every chunk
    head: dict[str, Any] = field(default_factory=dict)  # id and created of the first event
    text: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    earlier_tokens: int = 0  # generated by the instances before the one streaming now
    tokens: int = 0  # generated by the one streaming now, as its usage (or a count of text deltas) says
    finish: str | None = None
    unsafe: str | None = None  # a REFUSALS key, once a part that cannot be continued has been sent
    segments: int = 0  # continuations begun

    @property
    def sent(self) -> int:
        return self.earlier_tokens + self.tokens

    def seam(self) -> None:
        """A continuation begins: what came so far is the earlier instances'."""
        self.earlier_tokens, self.tokens, self.segments = self.sent, 0, self.segments + 1

    def read(self, piece: bytes) -> bytes:
        """The events of `piece` read, and written as the client gets them (the same bytes where nothing changed)."""
        out: list[bytes] = []
        for event in piece.split(b"\n\n"):
            if not event.startswith(b"data:") or event == DONE.rstrip():
                if event:
                    out.append(event + b"\n\n")
                continue
            data = orjson.loads(event[5:])
            if (kept := self._event(data)) is not None:
                out.append(b"data: " + orjson.dumps(kept) + b"\n\n")
        return b"".join(out)

    def _event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if not self.head:
            self.head = {"id": data.get("id"), "created": data.get("created")}
        elif self.segments:
            data.update({k: v for k, v in self.head.items() if v is not None})
        choices = [kept for choice in data.get("choices") or () if (kept := self._choice(choice)) is not None]
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        else:
            self.tokens += sum(1 for choice in choices if _content(choice, self.chat))
        if data.get("choices") and not choices:
            return None  # only a continuation's role delta
        if isinstance(usage, dict):
            if choices and not self.continuous:
                del data["usage"]
            else:
                data["usage"] = self.usage()
        data["choices"] = choices
        return data

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        delta = choice.get("delta") or {}
        if self.segments and self.chat and "role" in delta:
            delta = {k: v for k, v in delta.items() if k != "role"}
            choice = {**choice, "delta": delta}
            if not delta.get("content") and not choice.get("finish_reason") and len(delta) <= 1:
                return None
        if self.chat and delta.get("tool_calls"):
            self.unsafe = "tool_call"
        if self.chat and (delta.get("reasoning_content") or delta.get("reasoning")):
            self.unsafe = "reasoning"
        if text := _content(choice, self.chat):
            self.text.append(text)
        self.finish = choice.get("finish_reason") or self.finish
        return choice

    def _usage(self, usage: dict[str, Any]) -> None:
        if self.prompt_tokens is None:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.tokens = int(usage.get("completion_tokens") or 0)

    def usage(self) -> dict[str, int]:
        prompt = self.prompt_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": self.sent, "total_tokens": prompt + self.sent}

    def ending(self, reason: str | None = None) -> bytes:
        """The events that end an answer whose last tokens have all been sent: its finish (when `reason`
        gives one), the usage (always: the relay drops it where the client did not ask), [DONE]."""
        events: list[dict[str, Any]] = []
        if reason is not None:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
            choice["delta" if self.chat else "text"] = {} if self.chat else ""
            events.append({**self.head, "object": _object(self.chat), "choices": [choice]})
        events.append({**self.head, "object": _object(self.chat), "choices": [], "usage": self.usage()})
        return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + DONE


def _content(choice: dict[str, Any], chat: bool) -> str:
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return text if isinstance(text, str) else ""


def _object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def continuation(chat: bool, body: dict[str, Any], transcript: Transcript) -> dict[str, Any]:
    """The request that goes on from where `transcript` stopped: the text so far as the answer's start."""
    text = "".join(transcript.text)
    sent = transcript.sent
    out = {**body}
    for key in ("max_tokens", "max_completion_tokens"):
        if out.get(key) is not None:
            out[key] = _count(out, key, 0) - sent
    if out.get("min_tokens"):
        out["min_tokens"] = max(0, _count(out, "min_tokens", 0) - sent)
    if not text:
        return out
    if chat:
        messages = list(body["messages"])
        last = messages[-1] if messages else {}
        if body.get("continue_final_message") and last.get("role") == "assistant":
            messages[-1] = {**last, "content": (last.get("content") or "") + text}
        else:
            messages.append({"role": "assistant", "content": text})
        out.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
    else:
        prompt = body["prompt"]
        out["prompt"] = (prompt[0] if isinstance(prompt, list) else prompt) + text
    return out


def remaining(body: dict[str, Any], sent: int) -> int | None:
    """The tokens the answer may still have (None: no limit asked)."""
    limits = [v for key in ("max_completion_tokens", "max_tokens") if isinstance(v := body.get(key), int)]
    return min(limits) - sent if limits else None


class ResumeCounts(collections.Counter[str]):
    """A route's watched streams that failed mid-way, by outcome: resumed, failed, refused."""


async def watched(source: AsyncIterator[bytes], counts: ResumeCounts, route: str) -> AsyncIterator[bytes]:
    """A stream that cannot be resumed (step 1): passed on as it is; a failure after its first piece is counted."""
    started = False
    try:
        async for piece in source:
            started = True
            yield piece
    except GatewayError as exc:
        if started:
            counts["refused"] += 1
            log.warning("route %s: a stream failed mid-way and cannot be resumed (%s)", route, exc.message)
        raise


async def resumed(
    chat: bool,
    body: dict[str, Any],
    open_: Open,
    counts: ResumeCounts,
    route: str,
    max_resumes: int,
) -> AsyncIterator[bytes]:
    """Steps 2 to 6 for one resumable stream: its events, continued on another instance where one fails."""
    options = body.get("stream_options") or {}
    transcript = Transcript(
        chat, continuous=bool(options.get("include_usage") and options.get("continuous_usage_stats"))
    )
    asking = {**body, "stream_options": {**options, "include_usage": True, "continuous_usage_stats": True}}
    served: set[str] = set()
    source = open_(asking, served)
    failure: GatewayError | None = None
    while True:
        try:
            async with contextlib.aclosing(source) as pieces:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
                async for piece in pieces:
                    if data := transcript.read(piece):
                        yield data
            if failure is not None:
                counts["resumed"] += 1
            return
        except GatewayError as exc:
            if not transcript.head and failure is None:
                raise  # nothing passed on: the route's own retries were spent
            failure = exc
        if transcript.finish is not None or remaining(body, transcript.sent) == 0:
            yield transcript.ending(None if transcript.finish else "length")
            counts["resumed"] += 1
            return
        if transcript.unsafe is not None or transcript.segments >= max_resumes:
            outcome = "refused" if transcript.unsafe else "failed"
            counts[outcome] += 1
            why = REFUSALS[transcript.unsafe] if transcript.unsafe else f"{max_resumes} continuations already"
            log.warning("route %s: a stream failed mid-way and was not resumed: %s", route, why)
            raise failure
        log.warning(
            "route %s: a stream failed after %d tokens (%s); resuming it on another instance",
            route,
            transcript.sent,
            failure.message,
        )
        transcript.seam()
        source = open_(continuation(chat, asking, transcript), served)
