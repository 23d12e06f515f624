"""Tokenizer routes: a wire request -> the adapter's Tokenizer -> a wire answer."""

from __future__ import annotations

from typing import cast

import orjson

from engine_adapters.base import GenerateRequest, Relay, RouteRequest, SamplingOptions, Tokenizer
from gateway.errors import EngineUnavailable, InvalidRequest
from gateway.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenCheckRequest,
    TokenCheckResponse,
    TokenCheckResult,
    TokenizeRequest,
    TokenizeResponse,
)
from gateway.services.tool_calls import template_messages
from gateway.services.wire import new_id
from gateway.state import AppState


def _model_name(state: AppState, model: str | None) -> str:
    """The named model; like vLLM, the one model served when none is named."""
    if model is not None:
        return model
    only = state.only_model()
    if only is None:
        raise InvalidRequest("This server serves several models: name one in `model`.", param="model")
    return only


def _tokenizer(state: AppState, model: str) -> Tokenizer:
    state.model_info(model)  # ModelNotFound (404) for a name nobody serves
    if not state.ready:
        raise EngineUnavailable("The server is not ready to serve requests.")
    adapter = state.adapters[model]
    if not isinstance(adapter, Tokenizer):
        raise InvalidRequest(f"Tokenization is not supported for the model `{model}`.", param="model")
    return adapter


def _max_model_len(state: AppState, model: str) -> int | None:
    return state.model_info(model).max_model_len


async def tokenize(state: AppState, req: TokenizeRequest) -> TokenizeResponse:
    model = _model_name(state, req.model)
    tokenizer = _tokenizer(state, model)
    ids = await tokenizer.tokenize(
        GenerateRequest(
            request_id=new_id("tokenize"),
            model=model,
            sampling=SamplingOptions(),
            prompt=req.prompt,
            # As a chat request renders them: the same messages and tools give the same prompt ids.
            messages=template_messages(req.messages) if req.messages else None,
            tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template_kwargs=req.chat_template_kwargs,
            add_special_tokens=req.add_special_tokens,
        )
    )
    token_strs = await tokenizer.token_strings(model, ids) if req.return_token_strs else None
    return TokenizeResponse(
        count=len(ids), max_model_len=_max_model_len(state, model), tokens=ids, token_strs=token_strs
    )


async def detokenize(state: AppState, req: DetokenizeRequest) -> DetokenizeResponse:
    model = _model_name(state, req.model)
    return DetokenizeResponse(prompt=await _tokenizer(state, model).detokenize(model, req.tokens))


async def token_check(state: AppState, req: TokenCheckRequest) -> TokenCheckResponse:
    """FastChat's check: does each prompt, plus the max_tokens it wants, fit the model's context?"""
    results = []
    for item in req.prompts:
        count = await _count(state, item.model, item.prompt)
        context = _max_model_len(state, item.model) or 0
        results.append(
            TokenCheckResult(fits=count + item.max_tokens <= context, tokenCount=count, contextLength=context)
        )
    return TokenCheckResponse(prompts=results)


async def _count(state: AppState, model: str, prompt: str) -> int:
    """The prompt's token count: from the engine's tokenizer, or in router mode from an instance's /tokenize."""
    request_id = new_id("tokencheck")
    if not isinstance(state.adapters.get(model), Relay):
        request = GenerateRequest(request_id=request_id, model=model, sampling=SamplingOptions(), prompt=prompt)
        return len(await _tokenizer(state, model).tokenize(request))
    relay = cast(Relay, state.adapter_for(model, state.model_info(model).kind))
    routed = RouteRequest(request_id, model, prompt)
    answer = orjson.loads(await relay.forward(routed, "/tokenize", {"model": model, "prompt": prompt}))
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list):
        raise EngineUnavailable("The upstream's /tokenize answer has no tokens.")
    return len(tokens)
