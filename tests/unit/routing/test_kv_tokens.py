"""Token ids for policy kv: chats that share their start are routed on the start's ids, asked once, when the
chat template renders the start as the beginning of the whole chat."""

from __future__ import annotations

from array import array
from typing import Any

import orjson

from engine_adapters.base import RouteRequest
from gateway.routing.kv_index import block_keys
from gateway.routing.kv_tokens import Prompt, PromptTokens
from gateway.settings import RouterSettings

SYSTEM = {"role": "system", "content": "a long shared document " * 8}


class ChatMLTokenizer:
    """Each message rendered in turn, as ChatML and Llama 3 do: a start renders as the beginning of the whole."""

    def __init__(self) -> None:
        self.calls: list[bool] = []  # add_generation_prompt of each rendering

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return "".join(f"<{m['role']}>{m['content']}<end>" for m in messages) + (
            "<bot>" if add_generation_prompt else ""
        )

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool, add_generation_prompt: bool) -> str:
        self.calls.append(add_generation_prompt)
        return self.render(messages, add_generation_prompt)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(ch) for ch in text]


class FoldingTokenizer(ChatMLTokenizer):
    """As Gemma's template does: the system prompt goes into the first user turn, so alone it renders nothing."""

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        system = "".join(m["content"] for m in messages if m["role"] == "system")
        rest = [m for m in messages if m["role"] != "system"]
        if rest:
            rest[0] = {**rest[0], "content": system + rest[0]["content"]}
        return "<bos>" + super().render(rest, add_generation_prompt)


def chat(question: str, system: dict[str, Any] = SYSTEM) -> RouteRequest:
    return RouteRequest("r", "m", messages=[system, {"role": "user", "content": question}])


async def ids(tokens: PromptTokens, request: RouteRequest, instance: Any = None) -> list[int] | None:
    prompt = await tokens.prompt(request, lambda: instance)
    return prompt.ids.tolist() if prompt is not None else None


async def test_chats_sharing_a_start_are_routed_on_its_ids_asked_once() -> None:
    tokenizer = ChatMLTokenizer()
    tokens = PromptTokens(RouterSettings(), tokenizer)
    first = await ids(tokens, chat("one?"))
    assert tokenizer.calls == [True]  # a start seen once: the chat is tokenized whole
    second = await ids(tokens, chat("two?"))
    assert tokenizer.calls == [True, False]  # seen again: the start alone is asked for (no generation prompt)
    third = await ids(tokens, chat("three?"))
    assert tokenizer.calls == [True, False]  # asked of no one
    start = tokenizer.encode(tokenizer.render([SYSTEM], False))
    assert second == third == start and first is not None and first[: len(start)] == start
    assert await ids(tokens, chat("one?")) == first  # a chat's own ids still come first


async def test_a_start_the_template_renders_otherwise_is_refused_and_not_asked_again() -> None:
    tokenizer = FoldingTokenizer()
    tokens = PromptTokens(RouterSettings(), tokenizer)
    for question in ("one?", "two?", "three?", "four?"):
        assert await ids(tokens, chat(question)) == tokenizer.encode(tokenizer.render(chat(question).messages, True))  # type: ignore[arg-type]
    assert tokenizer.calls == [True, False, True, True, True]  # "<bos>" alone: refused once, then whole chats


async def test_shared_starts_can_be_switched_off_and_need_a_last_message_from_the_user() -> None:
    tokenizer = ChatMLTokenizer()
    tokens = PromptTokens(RouterSettings(kv_tokenize_shared_starts=False), tokenizer)
    for question in ("one?", "two?", "three?"):
        await ids(tokens, chat(question))
    assert tokenizer.calls == [True, True, True]
    tokenizer.calls.clear()
    tokens = PromptTokens(RouterSettings(kv_tokenize_reuse_turns=False), tokenizer)
    for answer in ("a", "b", "c"):  # the same start, but the last message is the assistant's own
        await ids(tokens, RouteRequest("r", "m", messages=[SYSTEM, {"role": "assistant", "content": answer}]))
    assert tokenizer.calls == [True, True, True]


class RenderingInstance:
    """An instance's /tokenize, rendering the body it is sent as ChatMLTokenizer does."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def forward(self, request: RouteRequest, path: str, body: dict[str, Any]) -> bytes:
        assert path == "/tokenize"
        self.bodies.append(body)
        text = ChatMLTokenizer().render(body["messages"], body["add_generation_prompt"])
        return orjson.dumps({"tokens": [ord(ch) for ch in text]})


async def test_an_instance_is_asked_for_the_start_without_a_generation_prompt() -> None:
    instance = RenderingInstance()
    tokens = PromptTokens(RouterSettings())
    for question in ("one?", "two?", "three?"):
        await ids(tokens, chat(question), instance)
    assert [len(b["messages"]) for b in instance.bodies] == [2, 1]
    assert [b["add_generation_prompt"] for b in instance.bodies] == [True, False]


async def test_a_start_is_learned_from_an_earlier_chat_only_while_that_chats_ids_are_kept() -> None:
    tokenizer = ChatMLTokenizer()
    tokens = PromptTokens(RouterSettings(kv_tokenize_cache_size=1), tokenizer)
    await ids(tokens, chat("one?"))
    await ids(tokens, RouteRequest("r", "m", "another prompt"))  # the cache holds one answer: chat one's goes
    await ids(tokens, chat("two?"))
    assert tokenizer.calls == [True, True]  # nothing to check a start against: the chat is tokenized whole
    assert await ids(tokens, chat("three?")) == tokenizer.encode(tokenizer.render([SYSTEM], False))
    assert tokenizer.calls == [True, True, False]  # checked against chat two's ids, kept until then


async def test_a_kept_prompt_is_keyed_once_at_each_block_size_and_its_keys_are_counted() -> None:
    tokens = PromptTokens(RouterSettings(), ChatMLTokenizer())
    first = await tokens.prompt(chat("one?"), lambda: None, [4])  # type: ignore[arg-type,return-value]
    assert first is not None and first.keys(4) == array("q", block_keys(first.ids, 4))
    ids_only = Prompt(first.ids).nbytes()
    assert tokens.status() == (1, first.nbytes()) and first.nbytes() == ids_only + 8 * (len(first.ids) // 4)
    again = await tokens.prompt(chat("one?"), lambda: None, [4, 8])  # type: ignore[arg-type,return-value]
    assert again is first and tokens.status() == (1, first.nbytes())  # keyed at 8 too, and counted again
    assert first.nbytes() == ids_only + 8 * (len(first.ids) // 4 + len(first.ids) // 8)


async def test_a_start_of_a_shape_that_began_its_chat_is_asked_alone_at_its_first_chat() -> None:
    tokenizer = ChatMLTokenizer()
    tokens = PromptTokens(RouterSettings(), tokenizer)
    await ids(tokens, chat("one?"))
    await ids(tokens, chat("two?"))  # the shape (a system message, then the user's) begins its chat: trusted
    other = {"role": "system", "content": "another group's document " * 8}
    tokenizer.calls.clear()
    first = await ids(tokens, chat("one?", other))
    assert tokenizer.calls == [False] and first == tokenizer.encode(tokenizer.render([other], False))
    assert await ids(tokens, chat("two?", other)) == first and tokenizer.calls == [False]
    named = {**other, "name": "ops"}  # another shape: the template may render it otherwise
    await ids(tokens, chat("one?", named))
    short = {"role": "system", "content": "terse"}  # the last message makes most of the chat
    await ids(tokens, chat("a long question " * 8, short))
    assert tokenizer.calls == [False, True, True]


async def test_a_shape_whose_start_did_not_begin_its_chat_is_not_asked_alone_again() -> None:
    tokenizer = FoldingTokenizer()
    tokens = PromptTokens(RouterSettings(), tokenizer)
    await ids(tokens, chat("one?"))
    await ids(tokens, chat("two?"))  # "<bos>" alone: refused, and the shape with it
    other = {"role": "system", "content": "another group's document " * 8}
    tokenizer.calls.clear()
    for question in ("one?", "two?", "three?"):
        await ids(tokens, chat(question, other))
    assert tokenizer.calls == [True, True, True]  # whole chats: its start is never asked for
