"""The request's sampling fields as the engine's SamplingOptions: one mapping for chat and completions,
which refuses what the engine cannot do."""

from __future__ import annotations

from engine_adapters.base import SamplingOptions
from gateway.errors import InvalidRequest
from gateway.protocol.common import SamplingFields
from gateway.services import structured


def sampling_options(
    req: SamplingFields, *, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None
) -> SamplingOptions:
    """`prompt_logprobs`: what the service needs (echo); the request's own vLLM extra is added here."""
    _check_unsupported(req)
    if req.prompt_logprobs is not None:
        prompt_logprobs = max(prompt_logprobs or 0, req.prompt_logprobs)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return SamplingOptions(
        n=req.n,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p if req.top_p else (None if req.top_p is None else 1e-9),
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        stop=stop,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        logit_bias=_logit_bias(req.logit_bias),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        structured=structured.requested(req),
        tokens_as_ids=req.return_tokens_as_token_ids,
        beam_search=req.use_beam_search,
        length_penalty=req.length_penalty,
    )


def _check_unsupported(req: SamplingFields) -> None:
    if req.use_beam_search and (req.stop or req.stop_token_ids):
        # vLLM's beam search stops at EOS or max_tokens only.
        raise InvalidRequest("stop and stop_token_ids are not supported with beam search.", param="stop")
    if req.prompt_logprobs is not None and req.stream:
        # As vLLM: prompt logprobs come with the whole answer only.
        raise InvalidRequest("prompt_logprobs are not available when stream is true.", param="prompt_logprobs")


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids.", param="logit_bias") from None
