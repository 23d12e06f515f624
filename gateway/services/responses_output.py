"""One response's output as the engine's chunks come: its items (a message, function calls) and the
Responses stream's events, numbered by sequence_number. A whole answer runs the same builder and keeps
only the final object, so streamed and whole answers cannot differ.

Events: response.created, response.in_progress; for the message, output_item.added, content_part.added,
output_text.delta..., output_text.done, content_part.done, output_item.done; for each call (read when the
output ends, as chat reads them: a call is sent whole), output_item.added, function_call_arguments.delta,
function_call_arguments.done, output_item.done; then response.completed or response.incomplete.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from engine_adapters.base import Chunk
from gateway.protocol.responses import ResponseUsage
from gateway.services.tool_calls import ChoiceCalls, ToolPlan

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """OpenAI's Responses ids: resp_…, msg_…, fc_…"""
    return f"{prefix}_{os.urandom(16).hex()}"


class OutputBuilder:
    def __init__(self, response: dict[str, Any], tool_plan: ToolPlan | None, first_sequence: int = 0) -> None:
        self.response = response  # the response object as it stands; its output grows
        self.calls = ChoiceCalls(tool_plan) if tool_plan is not None else None
        self._numbers = itertools.count(first_sequence)
        self._message: dict[str, Any] | None = None  # the open message item
        self._text: list[str] = []
        self._reason: str | None = None
        self.prompt_tokens = self.output_tokens = 0

    def event(self, kind: str, **payload: Any) -> Event:
        return {"type": kind, "sequence_number": next(self._numbers), **payload}

    def opening(self) -> list[Event]:
        snapshot = {**self.response, "output": []}
        return [
            self.event("response.created", response=snapshot),
            self.event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: Chunk) -> list[Event]:
        self.prompt_tokens, self.output_tokens = chunk.prompt_tokens, chunk.completion_tokens
        self._reason = chunk.finish_reason or self._reason
        text = chunk.text
        if self.calls is not None and text:
            text = self.calls.feed(text)
        return self._text_events(text) if text else []

    def _text_events(self, text: str) -> list[Event]:
        events = [] if self._message is not None else self._open_message()
        self._text.append(text)
        events.append(self.event("response.output_text.delta", **self._where(), delta=text, logprobs=[]))
        return events

    def _open_message(self) -> list[Event]:
        self._message = {
            "type": "message",
            "id": new_id("msg"),
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.response["output"].append(self._message)
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            self.event("response.output_item.added", output_index=self._index(self._message), item=dict(self._message)),
            self.event("response.content_part.added", **self._where(), part=part),
        ]

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, held in enumerate(self.response["output"]) if held is item)

    def _where(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self._message["id"], "output_index": self._index(self._message), "content_index": 0}

    def finish(self) -> list[Event]:
        """The events that close the output; the response object is then final (terminal event excluded:
        see `terminal`, sent once the response is stored)."""
        events: list[Event] = []
        found: list[dict[str, Any]] = []
        if self.calls is not None:
            rest, found = self.calls.finish()
            if rest:
                events += self._text_events(rest)
        if self._message is None and not found:
            events += self._open_message()  # no calls and no text: an empty message, as OpenAI answers
        length_limited = self._reason == "length" and not found
        status = "incomplete" if length_limited else "completed"
        if self._message is not None:
            events += self._close_message(status)
        for call in found:
            events += self._call_events(call)
        self.response.update(
            status=status,
            incomplete_details={"reason": "max_output_tokens"} if length_limited else None,
            usage=ResponseUsage(
                input_tokens=self.prompt_tokens,
                output_tokens=self.output_tokens,
                total_tokens=self.prompt_tokens + self.output_tokens,
            ).model_dump(mode="json"),
        )
        return events

    def _close_message(self, status: str) -> list[Event]:
        assert self._message is not None
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": []}
        self._message.update(status=status, content=[part])
        return [
            self.event("response.output_text.done", **self._where(), text=text, logprobs=[]),
            self.event("response.content_part.done", **self._where(), part=part),
            self.event("response.output_item.done", output_index=self._index(self._message), item=dict(self._message)),
        ]

    def _call_events(self, call: dict[str, Any]) -> list[Event]:
        function = call["function"]
        item = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": call["id"],
            "name": function["name"],
            "arguments": "",
            "status": "in_progress",
        }
        self.response["output"].append(item)
        index = len(self.response["output"]) - 1
        where = {"item_id": item["id"], "output_index": index}
        events = [self.event("response.output_item.added", output_index=index, item=dict(item))]
        events.append(self.event("response.function_call_arguments.delta", **where, delta=function["arguments"]))
        events.append(self.event("response.function_call_arguments.done", **where, arguments=function["arguments"]))
        item.update(arguments=function["arguments"], status="completed")
        events.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def terminal(self) -> Event:
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        return self.event(kind, response=self.response)

    def interrupted(self, code: str, message: str) -> dict[str, Any]:
        """The response as it stands, failed: an open message closed `incomplete` with its text so far."""
        output = [dict(item) for item in self.response["output"]]
        for item in output:
            if item.get("status") == "in_progress":
                part = {"type": "output_text", "text": "".join(self._text), "annotations": []}
                item.update(status="incomplete", content=[part])
        return {**self.response, "status": "failed", "error": {"code": code, "message": message}, "output": output}

    def failed(self, error: dict[str, Any]) -> list[Event]:
        """A response that failed after it began: an error event, then response.failed."""
        self.response.update(self.interrupted(error["code"] or "server_error", error["message"]))
        return [
            self.event("error", code=error["code"], message=error["message"], param=error["param"]),
            self.event("response.failed", response=self.response),
        ]
