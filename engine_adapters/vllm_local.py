"""vLLM's AsyncLLM running in this process. vLLM is imported lazily, at start."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine_adapters.base import Chunk, GenerateRequest, Load, ModelInfo, SamplingOptions, TokenLogprob
from gateway.errors import ContextLengthExceeded, EngineUnavailable, GatewayError, InvalidRequest

log = logging.getLogger(__name__)

_ROLE_FOR_TEMPLATE = {"developer": "system"}


@dataclass
class LocalModelSpec:
    name: str
    path: str
    kind: str = "generate"  # "generate" or "embed"
    dtype: str = "auto"
    max_model_len: int | None = None
    chat_template: str | None = None  # template text; None keeps the tokenizer's own
    engine_args: dict[str, Any] = field(default_factory=dict)
    publish_metrics: bool = True  # vLLM's Prometheus metrics are global: one engine per process publishes


class VllmLocalAdapter:
    def __init__(self, spec: LocalModelSpec) -> None:
        self.spec = spec
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_model_len: int | None = spec.max_model_len
        # vLLM reads priority only under scheduling_policy "priority"; under its default (fcfs) it is not passed.
        self._by_priority = spec.engine_args.get("scheduling_policy") == "priority"

    async def start(self) -> None:
        _engine_env_defaults()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.spec.path,
            served_model_name=[self.spec.name],
            dtype=self.spec.dtype,  # type: ignore[arg-type]
            max_model_len=self.spec.max_model_len,  # type: ignore[arg-type]  # None: the model's own
            runner="pooling" if self.spec.kind == "embed" else "auto",
            disable_log_stats=not self.spec.publish_metrics,
            **{"enforce_eager": True, **self.spec.engine_args},
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._engine.get_tokenizer()
        self._max_model_len = self._engine.model_config.max_model_len

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        if self._engine is None:
            return
        deadline = asyncio.get_running_loop().time() + drain_deadline_s
        while self.load().in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._engine.shutdown()
        self._engine = None

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.spec.name, self._max_model_len, self.spec.kind, root=self.spec.path)]

    def load(self) -> Load:
        if self._engine is None:
            return Load()
        return Load(in_flight=self._engine.get_num_unfinished_requests())

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineUnavailable("The engine is not healthy.") from exc

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    # -- prompts ----------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        turns = [{**m, "role": _ROLE_FOR_TEMPLATE.get(m["role"], m["role"])} for m in messages]
        try:
            rendered = self._tokenizer.apply_chat_template(
                turns,
                chat_template=self.spec.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja's raise_exception, a missing template
            raise InvalidRequest(f"The chat template cannot render these messages: {exc}", param="messages") from exc
        return str(rendered)

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            # The template writes BOS itself: a second one ruins the output.
            text = self.render_chat(request.messages, request.add_generation_prompt)
            return list(self._tokenizer.encode(text, add_special_tokens=False))
        if isinstance(request.prompt, str):
            return list(self._tokenizer.encode(request.prompt))
        return list(request.prompt or [])

    def _check_context(self, prompt_len: int, max_tokens: int | None) -> int:
        limit = self._max_model_len or 0
        if prompt_len == 0:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        room = limit - prompt_len
        if room < 1 or (max_tokens is not None and max_tokens > room):
            wanted = prompt_len + (max_tokens or 1)
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{wanted} tokens ({prompt_len} in the messages, {max_tokens or 1} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages",
            )
        return max_tokens or room

    # -- generation -------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        ids = self.prompt_ids(request)
        max_tokens = self._check_context(len(ids), request.sampling.max_tokens)
        # Greedy choices are all the same text: vLLM refuses n > 1 there, OpenAI answers n copies.
        copies = request.sampling.n if _is_greedy(request.sampling) else 1
        params = _sampling_params(replace(request.sampling, n=1) if copies > 1 else request.sampling, max_tokens)
        counts: dict[int, int] = {}
        try:
            extra = {"priority": request.priority} if self._by_priority else {}
            stream = self._engine.generate({"prompt_token_ids": ids}, params, request.request_id, **extra)
            async for out in stream:
                for comp in out.outputs:
                    for index in range(copies) if copies > 1 else (comp.index,):
                        yield self._chunk(out, comp, counts, request, len(ids), index)
        except GatewayError:
            raise
        except Exception as exc:
            raise _map_engine_error(exc) from exc

    def _chunk(self, out: Any, comp: Any, counts: dict[int, int], request: GenerateRequest, prompt_len: int,
               index: int) -> Chunk:
        first = index not in counts
        counts[index] = counts.get(index, 0) + len(comp.token_ids)
        chunk = Chunk(
            index=index,
            text=comp.text,
            token_ids=comp.token_ids,
            finish_reason=comp.finish_reason,
            prompt_tokens=prompt_len,
            completion_tokens=counts[index],
        )
        if request.sampling.logprobs is not None and comp.logprobs is not None:
            chunk.logprobs = _token_logprobs(comp.token_ids, comp.logprobs, request.sampling.logprobs)
        if first and request.sampling.prompt_logprobs is not None:
            chunk.prompt_text = self._tokenizer.decode(out.prompt_token_ids, skip_special_tokens=True)
            chunk.prompt_logprobs = self._prompt_logprobs(out, request.sampling.prompt_logprobs)
        return chunk

    def _prompt_logprobs(self, out: Any, top: int) -> list[TokenLogprob | None]:
        ids = out.prompt_token_ids
        positions = list(out.prompt_logprobs or [None] * len(ids))
        if ids and ids[0] == self._tokenizer.bos_token_id:
            # BOS is not part of the echoed text, and it is the one token with no logprob.
            ids, positions = ids[1:], positions[1:]
        result: list[TokenLogprob | None] = []
        for token_id, position in zip(ids, positions):
            if not position:
                token = self._tokenizer.convert_ids_to_tokens([token_id])[0]
                result.append(TokenLogprob(self._tokenizer.convert_tokens_to_string([token]), float("nan")))
            else:
                result.append(_one_logprob(token_id, position, top))
        return result

    # -- embeddings -------------------------------------------------------------

    async def embed(self, request_id: str, model: str, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        prompts = [self._embedding_prompt(item) for item in inputs]
        results = await asyncio.gather(
            *(self._encode_one(f"{request_id}-{i}", ids) for i, ids in enumerate(prompts))
        )
        return list(results), sum(len(ids) for ids in prompts)

    def _embedding_prompt(self, item: str | list[int]) -> list[int]:
        ids = list(self._tokenizer.encode(item)) if isinstance(item, str) else list(item)
        limit = self._max_model_len or 0
        if len(ids) > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but an input has {len(ids)} tokens.",
                param="input",
            )
        return ids

    async def _encode_one(self, request_id: str, ids: list[int]) -> list[float]:
        from vllm import PoolingParams

        final = None
        try:
            async for out in self._engine.encode({"prompt_token_ids": ids}, PoolingParams(task="embed"), request_id):
                final = out
        except Exception as exc:
            raise _map_engine_error(exc) from exc
        if final is None:
            raise EngineUnavailable("The engine returned no embedding.")
        return [float(x) for x in final.outputs.data.tolist()]


def _engine_env_defaults() -> None:
    """Settings proven on small CPU machines; anything the operator set wins."""
    cores = sorted(os.sched_getaffinity(0))
    defaults = {
        "HF_HUB_OFFLINE": "1",  # weights come from disk or packages, never from a hub
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_HOST_IP": "127.0.0.1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _is_greedy(opts: SamplingOptions) -> bool:
    return opts.temperature is not None and opts.temperature < 1e-5  # vLLM's own threshold


def _sampling_params(opts: SamplingOptions, max_tokens: int) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    optional: dict[str, Any] = {
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "top_k": opts.top_k,
        "min_p": opts.min_p,
        "seed": opts.seed,
        "presence_penalty": opts.presence_penalty,
        "frequency_penalty": opts.frequency_penalty,
        "repetition_penalty": opts.repetition_penalty,
        "logprobs": opts.logprobs,
        "prompt_logprobs": opts.prompt_logprobs,
        "logit_bias": opts.logit_bias,
    }
    try:
        return SamplingParams(
            n=opts.n,
            max_tokens=max_tokens,
            stop=list(opts.stop),
            stop_token_ids=list(opts.stop_token_ids),
            include_stop_str_in_output=opts.include_stop_str_in_output,
            ignore_eos=opts.ignore_eos,
            min_tokens=opts.min_tokens,
            skip_special_tokens=opts.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
            **{key: value for key, value in optional.items() if value is not None},
        )
    except Exception as exc:  # vLLM's own validation (VLLMValidationError, ValueError)
        raise InvalidRequest(str(exc)) from exc


def _one_logprob(token_id: int, position: dict[int, Any], top: int) -> TokenLogprob:
    chosen = position[token_id]
    ranked = sorted(position.values(), key=lambda lp: lp.logprob, reverse=True)[:top]
    return TokenLogprob(
        token=chosen.decoded_token or "",
        logprob=max(chosen.logprob, -9999.0),
        top=tuple((lp.decoded_token or "", max(lp.logprob, -9999.0)) for lp in ranked),
    )


def _token_logprobs(token_ids: Iterable[int], positions: Iterable[dict[int, Any] | None], top: int) -> list[TokenLogprob]:
    return [_one_logprob(t, p, top) for t, p in zip(token_ids, positions) if p]


def _map_engine_error(exc: Exception) -> GatewayError:
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineUnavailable("The engine has stopped; the request cannot be served.")
    if isinstance(exc, (VLLMClientError, ValueError)):
        return InvalidRequest(str(exc))
    log.exception("engine failed", exc_info=exc)
    return GatewayError("engine error")


def read_template(path: str | Path | None) -> str | None:
    return Path(path).read_text() if path else None
