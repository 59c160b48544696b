"""Token-by-token generation with a KV cache, sampling, stop conditions and ``n`` choices.

One :class:`TextGenerator` owns one model. Generations run one at a time (an asyncio
lock, first come first served); each model step runs in a dedicated worker thread so the
event loop keeps serving. ``n`` choices of one request are decoded together as one batch
of ``n`` rows sharing the prompt. When the consumer stops iterating (client gone), no
further step runs.

Sampling: ``temperature == 0`` is greedy (argmax); otherwise logits are divided by the
temperature, nucleus filtering keeps the smallest set of tokens whose probability mass
reaches ``top_p`` (Holtzman et al., 2019, "The Curious Case of Neural Text
Degeneration"), and a token is drawn with a ``torch.Generator`` seeded by ``seed`` (random
when absent).
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from neocloud.errors import InvalidRequest
from neocloud.serving.textgen.detok import IncrementalDecoder, StopFilter


@dataclass(frozen=True)
class SamplingParams:
    """Options of one generation (see the module docstring); ``max_tokens`` per choice."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Delta:
    """New text of one choice after a step. On its last delta ``finish_reason`` is set and
    ``tokens`` holds the number of tokens the choice generated."""

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int = 0


@dataclass
class _Choice:
    decoder: IncrementalDecoder
    stops: StopFilter
    tokens: int = 0
    finish: str | None = None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class TextGenerator:
    """Generation over one causal LM and its tokenizer.

    Args:
        model: a transformers causal LM (or any module with the same call signature:
            ``model(input_ids=..., past_key_values=..., use_cache=True)`` returning
            ``.logits`` of shape ``(batch, seq, vocab)`` and ``.past_key_values``; the
            argument and attribute are named ``cache`` when ``forward`` takes ``cache``).
        tokenizer: its tokenizer (``apply_chat_template``, ``encode``, ``decode``).
        device: torch device string of the model.
        context_length: prompt + output limit in tokens (default from the model config).
    """

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu",
                 context_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        cfg = getattr(model, "config", None)
        self.context_length = context_length or int(
            getattr(cfg, "max_position_embeddings", 0) or 2048
        )
        self.eos_ids = _eos_ids(model, tokenizer)
        # transformers 5 renamed ``past_key_values`` to ``cache`` (argument and output)
        try:
            names = set(inspect.signature(model.forward).parameters)
        except (AttributeError, TypeError, ValueError):
            names = set()
        self._cache_arg = "cache" if "cache" in names else "past_key_values"
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="textgen")

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template plus the
        assistant turn prefix.

        Raises:
            InvalidRequest: a message has unsupported content, or the model has no template.
        """
        flat = []
        for i, m in enumerate(messages):
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text":
                        raise InvalidRequest(
                            f"messages.{i}.content: only text parts are supported",
                            param=f"messages.{i}.content",
                        )
                    parts.append(str(part.get("text", "")))
                content = "".join(parts)
            flat.append({"role": "system" if m["role"] == "developer" else m["role"],
                         "content": content or ""})
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template; use /v1/completions",
                                 param="messages")
        try:
            text = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True,
                                                      tokenize=False)
        except Exception as exc:  # the template itself refuses (jinja raise_exception)
            raise InvalidRequest(f"messages: {exc}", param="messages") from exc
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def text_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's own special tokens)."""
        return list(self.tokenizer.encode(prompt))

    def check(self, prompt_ids: list[int], max_tokens: int | None, default_max: int | None
              ) -> int:
        """The effective ``max_tokens`` for a prompt.

        ``default_max`` None means "up to the context length".

        Raises:
            InvalidRequest: empty prompt, or prompt + ``max_tokens`` beyond the context.
        """
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise InvalidRequest(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.context_length} tokens", param="messages", code="context_length_exceeded")
        if max_tokens is None:
            return room if default_max is None else min(default_max, room)
        if max_tokens > room:
            raise InvalidRequest(
                f"max_tokens {max_tokens} + prompt {len(prompt_ids)} tokens exceeds this "
                f"model's context of {self.context_length} tokens", param="max_tokens",
                code="context_length_exceeded")
        return max_tokens

    # ------------------------------------------------------------------ model steps
    def _forward(self, input_ids: Any, past: Any) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: past})
        return out.logits[:, -1, :], getattr(out, self._cache_arg)

    def _sample(self, logits: Any, params: SamplingParams, gen: Any) -> list[int]:
        import torch

        with torch.inference_mode():
            logits = logits.float()
            if params.temperature == 0.0:
                return logits.argmax(dim=-1).tolist()
            probs = torch.softmax(logits / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_p, order = torch.sort(probs, dim=-1, descending=True)
                cum = torch.cumsum(sorted_p, dim=-1)
                drop = cum - sorted_p >= params.top_p  # keep tokens until the mass is reached
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            return torch.multinomial(probs, 1, generator=gen).squeeze(-1).tolist()

    def _first_step(self, prompt_ids: list[int], params: SamplingParams) -> tuple[Any, Any, Any]:
        import torch

        gen = torch.Generator(device=self.device)
        gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        ids = torch.tensor([prompt_ids] * params.n, dtype=torch.long, device=self.device)
        logits, past = self._forward(ids, None)
        return self._sample(logits, params, gen), past, gen

    def _next_step(self, tokens: list[int], past: Any, params: SamplingParams, gen: Any
                   ) -> tuple[list[int], Any]:
        import torch

        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(-1)
        logits, past = self._forward(ids, past)
        return self._sample(logits, params, gen), past

    # ------------------------------------------------------------------ generation
    async def generate(self, prompt_ids: list[int], params: SamplingParams
                       ) -> AsyncIterator[list[Delta]]:
        """Yield, after every model step, the text deltas of the choices that have new text.

        Each choice ends with a delta carrying ``finish_reason`` (``stop`` for EOS or a
        stop string, ``length`` at ``max_tokens``) and its generated token count.
        """
        loop = asyncio.get_running_loop()
        async with self._lock:
            choices = [_Choice(IncrementalDecoder(self.tokenizer), StopFilter(list(params.stop)))
                       for _ in range(params.n)]
            tokens, past, gen = await loop.run_in_executor(
                self._executor, self._first_step, prompt_ids, params)
            while True:
                deltas = self._advance(choices, tokens, params)
                if deltas:
                    yield deltas
                if all(c.finish for c in choices):
                    return
                tokens, past = await loop.run_in_executor(
                    self._executor, self._next_step, tokens, past, params, gen)

    def _advance(self, choices: list[_Choice], tokens: list[int], params: SamplingParams
                 ) -> list[Delta]:
        out: list[Delta] = []
        for i, (c, tok) in enumerate(zip(choices, tokens, strict=True)):
            if c.finish:
                continue
            c.tokens += 1
            finish = None
            if tok in self.eos_ids:
                text, finish = c.decoder.flush(), "stop"
            else:
                text = c.decoder.push(tok)
            emit, hit = c.stops.feed(text)
            if hit:
                finish = "stop"
            elif finish is None and c.tokens >= params.max_tokens:
                tail, _ = c.stops.feed(c.decoder.flush())
                emit += tail
                finish = "length"
            if finish is not None and not hit:
                emit += c.stops.flush()
            c.finish = finish
            if emit or finish:
                out.append(Delta(i, emit, finish, c.tokens if finish else 0))
        return out


async def run_to_end(gen: TextGenerator, prompt_ids: list[int], params: SamplingParams
                     ) -> tuple[list[str], list[str], int]:
    """Generate fully; returns ``(text per choice, finish_reason per choice, generated
    tokens over all choices)``."""
    texts = [""] * params.n
    finish = ["length"] * params.n
    tokens = 0
    async for deltas in gen.generate(prompt_ids, params):
        for d in deltas:
            texts[d.index] += d.text
            if d.finish_reason:
                finish[d.index] = d.finish_reason
                tokens += d.tokens
    return texts, finish, tokens
