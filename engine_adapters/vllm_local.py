"""vLLM's AsyncLLM running in this process. vLLM is imported lazily, at start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine_adapters.base import (
    NOTHING_FORWARDED,
    Chunk,
    Forwarded,
    GenerateRequest,
    Load,
    ModelInfo,
    RankedLogprob,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from engine_adapters.errors import ContextLengthExceeded, EngineUnavailable, GatewayError, InvalidRequest
from engine_adapters.media import MODALITY_OF_PART, MediaPolicy, media_parts, resolve_media, text_only_message
from engine_adapters.polling import poll_until

log = logging.getLogger(__name__)

_ROLE_FOR_TEMPLATE = {"developer": "system"}
CPU = "cpu"  # vLLM's name for its CPU platform (current_platform.device_type)


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
    lora_adapters: dict[str, str] = field(default_factory=dict)  # served name -> adapter directory
    kv_events: tuple[str, str | None] | None = None  # publish KV-cache events: (ZMQ endpoint, replay endpoint)
    media: MediaPolicy = field(default_factory=MediaPolicy)  # what media a multimodal model may be given


class VllmLocalAdapter:
    def __init__(self, spec: LocalModelSpec, platform: str | None = None) -> None:
        self.spec = spec
        self._platform = platform  # vLLM's device type ("cpu", "cuda"); None: the one vLLM detects
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_model_len: int | None = spec.max_model_len
        self._cross_encoder = False  # a one-label sequence classifier: pairs are scored by it (score_pairs)
        self._modalities: tuple[str, ...] = ("text",)  # the inputs the model takes: text, and image, audio ...
        # vLLM reads priority only under scheduling_policy "priority"; under its default (fcfs) it is not passed.
        self._by_priority = spec.engine_args.get("scheduling_policy") == "priority"
        # vLLM continues a trace only when it exports its own (engine arg otlp_traces_endpoint); otherwise it
        # would drop the trace headers with a warning on every request.
        self._traced = bool(spec.engine_args.get("otlp_traces_endpoint"))
        # LoRA adapters served as model names: name -> (vLLM's lora_int_id, path). Ids are never reused,
        # so a re-loaded adapter is not mistaken for the one vLLM still caches under the old id.
        self._loras: dict[str, tuple[int, str]] = {}
        self._last_lora_id = 0
        for name, path in spec.lora_adapters.items():
            self._remember_lora(name, path)

    async def start(self) -> None:
        platform = self._platform or detected_platform()
        set_env_defaults(env_defaults_for(platform, sorted(os.sched_getaffinity(0))))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = engine_args_for(self.spec, platform)
        if isinstance(events := engine_args.get("kv_events_config"), dict):
            from vllm.config.kv_events import KVEventsConfig

            engine_args["kv_events_config"] = KVEventsConfig(**events)
        args = AsyncEngineArgs(**engine_args)
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._engine.get_tokenizer()
        self._max_model_len = self._engine.model_config.max_model_len
        self._cross_encoder = is_cross_encoder(self._engine.model_config.hf_config)
        self._modalities = ("text", *input_modalities(self._engine))
        for name in self._loras:  # vLLM loads adapters lazily: a bad one fails the start, not a request
            try:
                await self._engine.add_lora(self._lora_request(name))
            except Exception as exc:
                self._engine.shutdown()
                self._engine = None
                raise RuntimeError(f"LoRA adapter {name!r} of {self.spec.name!r} cannot be loaded: {exc}") from exc

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        if self._engine is None:
            return
        engine, deadline = self._engine, time.monotonic() + drain_deadline_s
        await poll_until(lambda: not self.load().in_flight or engine.errored, lambda: deadline)
        self._engine.shutdown()
        self._engine = None

    def models(self) -> list[ModelInfo]:
        base = ModelInfo(
            self.spec.name,
            self._max_model_len,
            self.spec.kind,
            root=self.spec.path,
            kv_events=self.spec.kv_events,
            input_modalities=self._modalities,
        )
        loras = [
            ModelInfo(
                name,
                self._max_model_len,
                self.spec.kind,
                root=path,
                parent=self.spec.name,
                input_modalities=self._modalities,
            )
            for name, (_, path) in self._loras.items()
        ]
        return [base, *loras]

    # -- LoRA -------------------------------------------------------------------

    def _remember_lora(self, name: str, path: str) -> None:
        self._last_lora_id += 1
        self._loras[name] = (self._last_lora_id, path)

    def _lora_request(self, model: str) -> Any:
        """vLLM's LoRARequest when `model` names one of our adapters; None for the base model."""
        if model not in self._loras:
            return None
        from vllm.lora.request import LoRARequest

        lora_id, path = self._loras[model]
        return LoRARequest(model, lora_id, path, base_model_name=self.spec.name)

    async def load_lora(self, name: str, path: str) -> None:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        if self._engine.vllm_config.lora_config is None:
            raise InvalidRequest(f"LoRA is not enabled for model {self.spec.name!r}.", param="lora_name")
        if name == self.spec.name or name in self._loras:
            raise InvalidRequest(f"The model {name!r} is already served.", param="lora_name")
        self._remember_lora(name, path)
        try:
            # Loads (and checks) the weights now, so a bad path fails here rather than on the first request.
            await self._engine.add_lora(self._lora_request(name))
        except Exception as exc:
            del self._loras[name]
            raise InvalidRequest(f"Failed to load LoRA adapter {name!r}: {exc}", param="lora_path") from exc

    async def unload_lora(self, name: str) -> None:
        """Idempotent: an adapter that is not loaded is left as it is."""
        lora = self._loras.pop(name, None)
        if lora is not None and self._engine is not None:
            await self._engine.remove_lora(lora[0])

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

    def death_cause(self) -> str | None:
        if self._engine is None or not self._engine.errored:
            return None
        return _engine_exit_report(self._engine) or "the engine reported a fatal error (see vLLM's log above)"

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    # -- prompts ----------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        *,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        turns = [_template_turn(m) for m in messages]
        try:
            rendered = self._tokenizer.apply_chat_template(
                turns,
                chat_template=self.spec.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                # Cuts the rendering right after the last message's text: the model continues that turn.
                continue_final_message=continue_final_message,
                **(template_kwargs or {}),
            )
        except Exception as exc:  # jinja's raise_exception, a missing template
            raise InvalidRequest(f"The chat template cannot render these messages: {exc}", param="messages") from exc
        return str(rendered)

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            text = self.render_chat(
                request.messages,
                request.add_generation_prompt,
                request.tools,
                continue_final_message=request.continue_final_message,
                template_kwargs=request.chat_template_kwargs,
            )
            # The template writes BOS itself: a second one ruins the output.
            return list(self._tokenizer.encode(text, add_special_tokens=bool(request.add_special_tokens)))
        if isinstance(request.prompt, str):
            if request.add_special_tokens is False:
                return list(self._tokenizer.encode(request.prompt, add_special_tokens=False))
            return list(self._tokenizer.encode(request.prompt))  # with BOS, as vLLM's prompts get it
        return list(request.prompt or [])

    # -- tokenization (the Tokenizer protocol; one tokenizer serves every name of this engine) --------

    async def tokenize(self, request: GenerateRequest) -> list[int]:
        return self.prompt_ids(request)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        self._check_vocab(token_ids)
        return str(self._tokenizer.decode(token_ids))

    async def token_strings(self, model: str, token_ids: list[int]) -> list[str]:
        self._check_vocab(token_ids)
        return [str(token) for token in self._tokenizer.convert_ids_to_tokens(token_ids)]

    def _check_vocab(self, token_ids: list[int]) -> None:
        size = len(self._tokenizer)
        bad = next((t for t in token_ids if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidRequest(
                f"Token id {bad} is out of vocabulary (the vocabulary has {size} tokens).", param="tokens"
            )

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

    async def _with_media(self, request: GenerateRequest) -> dict[str, Any]:
        """A chat whose messages hold media, through vLLM's own chat handling: its parser takes the content
        parts (every URL already a data: URL of what engine_adapters.media allowed), its renderer applies the
        chat template and its processor puts the model's placeholders in. The prompt it gives holds the media
        (multi_modal_data) for vLLM's multimodal input path."""
        from vllm.renderers.params import ChatParams

        assert request.messages is not None
        for param, part in media_parts(request.messages):
            if MODALITY_OF_PART.get(str(part.get("type"))) not in self._modalities:
                raise InvalidRequest(text_only_message(self.spec.name, part, self._modalities), param=param)
        messages = await resolve_media(list(request.messages), self.spec.media)  # vLLM reads OpenAI's shape
        kwargs: dict[str, Any] = {
            "add_generation_prompt": request.add_generation_prompt,
            "continue_final_message": request.continue_final_message,
            "tools": request.tools,
            **(request.chat_template_kwargs or {}),
        }
        params = ChatParams(chat_template=self.spec.chat_template, chat_template_kwargs=kwargs)
        try:
            _, prompt = await self._engine.renderer.render_messages_async(messages, params)
        except GatewayError:
            raise
        except Exception as exc:  # vLLM's own refusal of a part: a bad image, too many items
            raise InvalidRequest(f"The media in this request cannot be used: {exc}", param="messages") from exc
        if "prompt_token_ids" not in prompt:
            prompt["prompt_token_ids"] = list(self._tokenizer.encode(prompt.pop("prompt"), add_special_tokens=False))
        return dict(prompt)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        media = request.messages is not None and any(True for _ in media_parts(request.messages))
        prompt: dict[str, Any] = await self._with_media(request) if media else {}
        ids = prompt.get("prompt_token_ids") or self.prompt_ids(request)
        prompt["prompt_token_ids"] = ids
        max_tokens = self._check_context(len(ids), request.sampling.max_tokens)
        beam = request.sampling.beam_search
        # Greedy choices are all the same text: vLLM refuses n > 1 there, OpenAI answers n copies.
        copies = request.sampling.n if _is_greedy(request.sampling) and not beam else 1
        params = (
            None
            if beam
            else _sampling_params(replace(request.sampling, n=1) if copies > 1 else request.sampling, max_tokens)
        )
        counts: dict[int, int] = {}
        try:
            extra: dict[str, Any] = {"priority": request.priority} if self._by_priority else {}
            if (lora := self._lora_request(request.model)) is not None:
                extra["lora_request"] = lora
            if self._traced and (headers := request.forwarded.trace_headers()) is not None:
                extra["trace_headers"] = headers
            if beam:
                stream = self._beam_search(ids, request, max_tokens, lora)
            else:
                stream = self._engine.generate(prompt, params, request.request_id, **extra)
            async for out in stream:
                for comp in out.outputs:
                    for index in range(copies) if copies > 1 else (comp.index,):
                        yield self._chunk(out, comp, counts, request, len(out.prompt_token_ids or ids), index)
        except GatewayError:
            raise
        except Exception as exc:
            raise _map_engine_error(exc) from exc

    def _beam_search(self, ids: list[int], request: GenerateRequest, max_tokens: int, lora: Any) -> AsyncIterator[Any]:
        """vLLM v1's beam search lives in its API server, over the engine client, not in AsyncLLM: use it as
        a library. It runs one engine request per beam per step, and yields the n best beams at the end."""
        from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import BeamSearchParams

        class Searcher(BeamSearchOnlineMixin):
            def __init__(self, engine: Any) -> None:
                self.engine_client, self.renderer = engine, engine.renderer

        s = request.sampling
        params = BeamSearchParams(
            beam_width=s.n,
            max_tokens=max_tokens,
            ignore_eos=s.ignore_eos,
            temperature=s.temperature or 0.0,
            length_penalty=s.length_penalty,
            include_stop_str_in_output=s.include_stop_str_in_output,
            skip_special_tokens=s.skip_special_tokens,
        )
        return Searcher(self._engine).beam_search(tokens_input(ids), request.request_id, params, lora_request=lora)

    def _chunk(
        self, out: Any, comp: Any, counts: dict[int, int], request: GenerateRequest, prompt_len: int, index: int
    ) -> Chunk:
        first = index not in counts
        counts[index] = counts.get(index, 0) + len(comp.token_ids)
        chunk = Chunk(
            index=index,
            text=comp.text,
            token_ids=comp.token_ids,
            finish_reason=comp.finish_reason,
            stop_sequence=stop if isinstance(stop := getattr(comp, "stop_reason", None), str) else None,
            prompt_tokens=prompt_len,
            completion_tokens=counts[index],
        )
        if request.sampling.logprobs is not None and comp.logprobs is not None:
            chunk.logprobs = _token_logprobs(
                comp.token_ids, comp.logprobs, request.sampling.logprobs, request.sampling.tokens_as_ids
            )
        if first and request.sampling.prompt_logprobs is not None:
            chunk.prompt_text = self._tokenizer.decode(out.prompt_token_ids, skip_special_tokens=True)
            chunk.prompt_logprobs = self._prompt_logprobs(
                out, request.sampling.prompt_logprobs, request.sampling.tokens_as_ids
            )
            chunk.prompt_logprobs_by_id = _ranked_prompt_logprobs(out.prompt_logprobs)
        return chunk

    def _prompt_logprobs(self, out: Any, top: int, as_ids: bool = False) -> list[TokenLogprob | None]:
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
                result.append(_one_logprob(token_id, position, top, as_ids))
        return result

    # -- embeddings -------------------------------------------------------------

    async def embed(
        self, request_id: str, model: str, inputs: list[str] | list[list[int]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[list[float]], int]:
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        prompts = [self._embedding_prompt(item) for item in inputs]
        results = await asyncio.gather(*(self._encode_one(f"{request_id}-{i}", ids) for i, ids in enumerate(prompts)))
        return list(results), sum(len(ids) for ids in prompts)

    def _embedding_prompt(self, item: str | list[int]) -> list[int]:
        ids = list(self._tokenizer.encode(item)) if isinstance(item, str) else list(item)
        self._check_length(len(ids), "input")
        return ids

    def _check_length(self, tokens: int, param: str) -> None:
        limit = self._max_model_len or 0
        if tokens > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but an input has {tokens} tokens.",
                param=param,
            )

    async def _encode_one(self, request_id: str, ids: list[int]) -> list[float]:
        from vllm import PoolingParams

        data = await self._pool(request_id, ids, PoolingParams(task="embed"), "embedding")
        return [float(x) for x in data.tolist()]

    async def _pool(self, request_id: str, ids: list[int], params: Any, what: str) -> Any:
        """One input through the engine's pooling path (embed or classify); the final output's data."""
        final = None
        try:
            async for out in self._engine.encode({"prompt_token_ids": ids}, params, request_id):
                final = out
        except Exception as exc:
            raise _map_engine_error(exc) from exc
        if final is None:
            raise EngineUnavailable(f"The engine returned no {what}.")
        return final.outputs.data

    # -- cross-encoder scoring ------------------------------------------------

    def scores_pairs(self, model: str) -> bool:
        return self._cross_encoder and model == self.spec.name

    async def score_pairs(
        self, request_id: str, model: str, pairs: list[tuple[str, str]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[float], int]:
        """Each pair through the cross-encoder as vLLM's own score path runs it: the two texts tokenized as
        one input with their token type ids, classified by the one-label head (its sigmoid)."""
        if self._engine is None:
            raise EngineUnavailable("The engine is not running.")
        encoded = [self._tokenizer(first, second) for first, second in pairs]
        for item in encoded:
            self._check_length(len(item["input_ids"]), "text_2")
        results = await asyncio.gather(
            *(self._classify_one(f"{request_id}-{i}", item) for i, item in enumerate(encoded))
        )
        return list(results), sum(len(item["input_ids"]) for item in encoded)

    async def _classify_one(self, request_id: str, encoded: Any) -> float:
        from vllm import PoolingParams
        from vllm.entrypoints.pooling.scoring.utils import compress_token_type_ids

        params = PoolingParams(task="classify")
        if type_ids := encoded.get("token_type_ids"):
            params.extra_kwargs = {"compressed_token_type_ids": compress_token_type_ids(list(type_ids))}
        data = await self._pool(request_id, list(encoded["input_ids"]), params, "score")
        return float(data.reshape(-1)[0])


def input_modalities(engine: Any) -> tuple[str, ...]:
    """What a model takes besides text (image, audio, video), as vLLM's processor for it allows
    (limit_mm_per_prompt above 0); nothing for a text-only model."""
    processor = getattr(engine.renderer, "mm_processor", None)
    if processor is None:
        return ()
    return tuple(sorted(modality for modality, limit in processor.info.allowed_mm_limits.items() if limit > 0))


def is_cross_encoder(hf_config: Any) -> bool:
    """A sequence-classification model with one label (BertForSequenceClassification and the like):
    vLLM scores a pair with it as a cross-encoder, where an embedding model's pairs are scored by cosine."""
    architectures = getattr(hf_config, "architectures", None) or []
    classifies = any(str(name).endswith("ForSequenceClassification") for name in architectures)
    return classifies and getattr(hf_config, "num_labels", 0) == 1


def _template_turn(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as chat templates expect it: system for developer, and tool call
    arguments as objects (the wire carries them as JSON text; templates write them with tojson)."""
    turn = {**message, "role": _ROLE_FOR_TEMPLATE.get(message["role"], message["role"])}
    if message.get("tool_calls"):
        turn["tool_calls"] = [_call_with_object_arguments(call) for call in message["tool_calls"]]
    return turn


def _call_with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("function", {}).get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return call  # not JSON: the template gets the text as it came
    return {**call, "function": {**call["function"], "arguments": parsed}}


def detected_platform() -> str:
    """vLLM's platform here: "cpu" for its CPU build, else the device type ("cuda", ...)."""
    from vllm.platforms import current_platform

    return CPU if current_platform.is_cpu() else str(current_platform.device_type)


def engine_args_for(spec: LocalModelSpec, platform: str) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for `spec` on `platform`; the model's own engine_args win. On CPU, eager
    mode: torch.compile costs minutes of start-up on a small CPU machine and gains little there. Elsewhere
    vLLM's own defaults stand (on CUDA: CUDA graphs and torch.compile)."""
    platform_defaults: dict[str, Any] = {"enforce_eager": True} if platform == CPU else {}
    if spec.kv_events is not None:
        endpoint, replay = spec.kv_events
        platform_defaults["kv_events_config"] = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": endpoint,
            "replay_endpoint": replay,
        }
        platform_defaults["enable_prefix_caching"] = True  # the events come from the prefix cache
    return {
        "model": spec.path,
        "served_model_name": [spec.name],
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,  # None: the model's own
        "runner": "pooling" if spec.kind == "embed" else "auto",
        "disable_log_stats": not spec.publish_metrics,
        **platform_defaults,
        **spec.engine_args,
    }


def env_defaults_for(platform: str, cores: Iterable[int]) -> dict[str, str]:
    """Environment defaults for vLLM on `platform`, proven on small CPU machines; none elsewhere."""
    if platform != CPU:
        return {}
    return {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_HOST_IP": "127.0.0.1",  # one machine: the engine's processes talk over loopback
    }


def set_env_defaults(defaults: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each variable the operator has not set; what the operator set wins."""
    for key, value in defaults.items():
        environ.setdefault(key, value)


def _engine_exit_report(engine: Any) -> str | None:
    """How vLLM's engine processes ended ("EngineCore was killed by SIGKILL"), when they have; None if
    they have not ended (yet) or vLLM no longer keeps them where this looks (AsyncLLM's engine manager)."""
    manager = getattr(getattr(engine.engine_core, "resources", None), "engine_manager", None)
    finished = manager.finished_procs() if manager is not None else {}
    return "; ".join(f"{name} {_how_it_ended(code)}" for name, code in finished.items() if code != 0) or None


def _how_it_ended(exit_code: int) -> str:
    """An exit code in words; a negative one is the signal that killed the process (SIGKILL: often the OOM killer)."""
    if exit_code < 0 and -exit_code in signal.valid_signals():
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}"


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
        "structured_outputs": _structured_params(opts.structured),
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


def _structured_params(structured: StructuredOutput | None) -> Any:
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec = structured.spec
    value: Any = list(spec) if structured.kind == "choice" else (True if structured.kind == "json_object" else spec)
    fields: dict[str, Any] = {structured.kind: value}
    return StructuredOutputsParams(**fields)


def _one_logprob(token_id: int, position: dict[int, Any], top: int, as_ids: bool = False) -> TokenLogprob:
    def token(tid: int, lp: Any) -> str:
        # "token_id:N" names tokens that do not decode to text on their own (vLLM's return_tokens_as_token_ids).
        return f"token_id:{tid}" if as_ids else (lp.decoded_token or "")

    chosen = position[token_id]
    ranked = sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:top]
    return TokenLogprob(
        token=token(token_id, chosen),
        logprob=max(chosen.logprob, -9999.0),
        top=tuple((token(tid, lp), max(lp.logprob, -9999.0)) for tid, lp in ranked),
    )


def _token_logprobs(
    token_ids: Iterable[int], positions: Iterable[dict[int, Any] | None], top: int, as_ids: bool = False
) -> list[TokenLogprob]:
    return [_one_logprob(t, p, top, as_ids) for t, p in zip(token_ids, positions) if p]


def _ranked_prompt_logprobs(positions: Any) -> list[dict[int, RankedLogprob] | None] | None:
    """vLLM's prompt logprobs as they are, but for -inf, which JSON cannot carry (clamped, as vLLM does)."""
    if positions is None:
        return None
    return [
        {tid: RankedLogprob(max(lp.logprob, -9999.0), lp.rank, lp.decoded_token) for tid, lp in position.items()}
        if position
        else None
        for position in positions
    ]


def _map_engine_error(exc: Exception) -> GatewayError:
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineUnavailable("The engine has stopped; the request cannot be served.")
    if isinstance(exc, (VLLMClientError, ValueError)):
        return InvalidRequest(str(exc))
    log.exception("engine failed", exc_info=exc)
    return GatewayError("engine error")
