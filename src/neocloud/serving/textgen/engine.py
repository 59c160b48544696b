"""Continuous batching: iteration-level scheduling of token generation (Yu et al., OSDI'22,
"Orca: A Distributed Serving System for Transformer-Based Generative Models").

One :class:`TextGenerator` owns one model and one engine thread. Requests join and leave
the running batch at every step:

1. the inbox is read: new requests go to the waiting queue (first come, first served),
   cancelled ones (client gone) leave the batch and free their rows now;
2. admission and prefill, within the step's prefill allowance (``max_prefill_tokens``
   prompt tokens, padding included): first the next chunks of prompts already being
   prefilled in chunks, then waiting requests in order while the batch has rows left
   (``max_num_seqs``) and their whole run (prompt + ``max_tokens``) fits in the KV budget
   (``kv_budget_tokens``) beside the batch as it is laid out; a request that does not fit
   waits, and the queue is not overtaken. Prompts that fit the allowance whole are
   prefilled together in one forward and their first tokens sampled. A prompt longer than
   the allowance is prefilled in chunks (chunked prefill), one chunk per step, into a
   one-row cache of its own, and joins the batch when its last chunk is done; so running
   streams get a token at every step, and no step runs more than ``max_prefill_tokens``
   prompt tokens beside their decode;
3. one decode step for every running sequence (one token each), then detokenization,
   stop strings, EOS and ``max_tokens``; finished sequences free their rows.

Prefix caching (:mod:`neocloud.serving.textgen.prefix`): the keys and values of every
prompt prefilled are kept, in whole blocks, in a store beside the batch
(``prefix_cache_tokens``); a newcomer whose prompt begins with cached blocks gets them
copied into its row and computes only the rest (at least its last token), and the
prefill allowance counts only the tokens computed.

An optional ``on_step`` callback gets a :class:`StepReport` after every step (prompt
tokens run, request ids decoded and started), from the engine thread.

Each request has its own :class:`SamplingParams` (temperature, top_p, seed, stop, n,
max_tokens); its ``n`` choices are ``n`` rows. Since every admitted run was reserved
whole, the batch never outgrows the budget; should it still have to (a guard), the most
recently admitted sequence is preempted: its rows are freed and it goes back to the front
of the queue with its tokens, to be prefilled again (recomputation, as vLLM does); what
it already streamed is not repeated. A request whose ``n`` choices could not fit even
alone (:func:`slots_needed` > budget) is refused with a 400 before it starts.

Speed: a Llama-layout model runs through the engine's own forward
(:mod:`neocloud.serving.textgen.llama`: q/k/v and gate/up fused into one product each,
native RMSNorm, a rotary table, the LM head on the last positions only); other models run
the transformers forward. On a bfloat16 CPU model every product's weights are prepacked
for oneDNN at start (:mod:`neocloud.serving.textgen.linear`); without a
``torch_threads`` setting the engine thread's torch thread count is chosen from its own
decode step times (:mod:`neocloud.serving.textgen.threads`).

KV layout and accounting: :mod:`neocloud.serving.textgen.kvcache`. The model is a
transformers causal LM of the Llama family layout (``config.num_hidden_layers``,
``num_key_value_heads``, ``head_dim``) called with a 4-D boolean attention mask, explicit
position ids and the :class:`SlotCache` as its cache.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from neocloud.errors import InvalidRequest
from neocloud.serving.engine_metrics import EngineMetrics
from neocloud.serving.textgen.detok import IncrementalDecoder, StopFilter
from neocloud.serving.textgen.kvcache import COL_BLOCK, ROW_BLOCK, SlotCache
from neocloud.serving.textgen.prefix import PrefixCache, PrefixHit
from neocloud.serving.textgen.sampling import SamplingParams, make_generator, sample
from neocloud.serving.textgen.threads import ThreadChooser, usable_cpus

log = logging.getLogger("neocloud.serving")

#: Default cap on running sequences (rows of the batch).
DEFAULT_MAX_NUM_SEQS = 64
#: Default cap on prompt tokens (padding included) prefilled in one step; also the size of
#: the chunks a longer prompt is prefilled in.
DEFAULT_MAX_PREFILL_TOKENS = 512
#: Share of the memory available at start given to the KV cache by default.
DEFAULT_KV_MEMORY_FRACTION = 0.3
#: Default size of the prefix cache (:mod:`.prefix`): this fraction of the KV budget's
#: token slots (memory beside the budget, of the same size per token).
DEFAULT_PREFIX_CACHE_FRACTION = 0.125
#: Finished requests remembered for usage look-ups (:meth:`TextGenerator.usage`).
LEDGER_SIZE = 4096

__all__ = ["Delta", "EngineConfig", "SamplingParams", "StepReport", "TextGenerator", "Usage",
           "run_to_end", "slots_needed"]


@dataclass
class Delta:
    """New text of one choice after a step. On its last delta ``finish_reason`` is set and
    ``tokens`` holds the number of tokens the choice generated."""

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int = 0


@dataclass
class Usage:
    """Tokens of one request as the engine counted them (``finished`` once it ended, by
    completion, error or cancellation)."""

    prompt_tokens: int
    completion_tokens: int = 0
    finished: bool = False


@dataclass(frozen=True)
class StepReport:
    """What one engine step did (see ``on_step`` of :class:`TextGenerator`).

    Attributes:
        step: the step number (1, 2, ...).
        prefill_tokens: prompt tokens run through the model, padding included (at most
            ``max_prefill_tokens``).
        chunks: chunks of long prompts among them.
        started: request ids whose first token was sampled in this step.
        decoded: request ids of the rows decoded in this step (one entry per row).
    """

    step: int
    prefill_tokens: int
    chunks: int
    started: tuple[str, ...]
    decoded: tuple[str, ...]


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling limits of one engine.

    Attributes:
        max_num_seqs: most sequences (rows) decoded together.
        max_prefill_tokens: most prompt tokens (padding included) prefilled in one step;
            a longer prompt is prefilled in chunks of at most this many tokens, one
            chunk per step.
        kv_budget_tokens: KV-cache slots (tokens × rows, padding included); ``None``
            derives it from memory: :data:`DEFAULT_KV_MEMORY_FRACTION` of the memory
            available at start divided by the bytes of one token's keys and values
            (``2 × layers × kv_heads × head_dim × dtype size``).
        torch_threads: torch intra-op threads of the engine thread; ``None`` chooses
            between 1 and one per usable CPU from the engine's own decode
            step times (:mod:`neocloud.serving.textgen.threads`).
        fast_forward: run a Llama-layout model through the engine's own forward
            (:mod:`neocloud.serving.textgen.llama`: fused products, native RMSNorm,
            last-position LM head); other models, and ``False``, run the transformers
            forward.
        compile: compile that forward with ``torch.compile`` at start
            (:mod:`neocloud.serving.textgen.compiled`; see the README for its costs).
        prefix_cache_tokens: tokens of prompt prefixes kept for reuse
            (:mod:`neocloud.serving.textgen.prefix`); ``None``:
            :data:`DEFAULT_PREFIX_CACHE_FRACTION` of the KV budget; 0 turns it off.
    """

    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS
    kv_budget_tokens: int | None = None
    torch_threads: int | None = None
    fast_forward: bool = True
    compile: bool = False
    prefix_cache_tokens: int | None = None


def slots_needed(n: int, prompt_tokens: int, max_tokens: int) -> int:
    """KV slots a request needs when it runs alone: its ``n`` rows (rounded up to the row
    block) × prompt + output columns (rounded up to the column block)."""
    rows = -(-n // ROW_BLOCK) * ROW_BLOCK
    cols = -(-(prompt_tokens + max_tokens) // COL_BLOCK) * COL_BLOCK
    return rows * cols


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


def _available_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


class _Seq:
    """One choice of a request: one row of the batch while it runs."""

    __slots__ = ("req", "index", "tokens", "decoder", "stops", "gen", "finish", "row", "order",
                 "prefilling", "hit")

    def __init__(self, req: _Request, index: int, decoder: IncrementalDecoder,
                 stops: StopFilter, gen: Any) -> None:
        self.req = req
        self.index = index
        self.tokens: list[int] = []
        self.decoder = decoder
        self.stops = stops
        self.gen = gen
        self.finish: str | None = None
        self.row: int | None = None
        self.order = 0  # admission order (preemption takes the latest)
        self.prefilling = False  # its prompt is being prefilled in chunks (_Chunked)
        self.hit: PrefixHit | None = None  # cached prefix found at admission (prefix.py)


class _Chunked:
    """A prompt prefilled in chunks into a one-row cache of its own; ``seqs`` (the
    choices of one request that share this history) join the batch when it is done."""

    __slots__ = ("seqs", "history", "cache", "done", "horizon")

    def __init__(self, seqs: list[_Seq], history: list[int], cache: SlotCache) -> None:
        self.seqs = seqs
        self.history = history
        self.cache = cache
        self.done = 0  # tokens prefilled so far
        self.horizon = max(s.req.params.max_tokens - len(s.tokens) for s in seqs)

    @property
    def remaining(self) -> int:
        return len(self.history) - self.done


@dataclass(eq=False)
class _Request:
    rid: str
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    usage: Usage
    seqs: list[_Seq] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    waiting: bool = False


_END = object()


class TextGenerator:
    """Continuous-batching generation over one causal LM and its tokenizer.

    Args:
        model: a transformers causal LM (see the module docstring).
        tokenizer: its tokenizer (``apply_chat_template``, ``encode``, ``decode``).
        device: torch device string of the model.
        context_length: prompt + output limit in tokens (default from the model config).
        config: scheduling limits (:class:`EngineConfig`).
        on_step: called with a :class:`StepReport` after every step, on the engine
            thread (keep it short; an exception it raises is logged and ignored).
    """

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu",
                 context_length: int | None = None, config: EngineConfig | None = None,
                 on_step: Callable[[StepReport], None] | None = None) -> None:
        import torch

        from neocloud.serving.textgen.linear import pack_linears
        from neocloud.serving.textgen.llama import build_fast_forward

        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.config = config or EngineConfig()
        cfg = model.config
        self.context_length = context_length or int(
            getattr(cfg, "max_position_embeddings", 0) or 2048)
        #: the engine's own forward of a Llama-layout model (None: transformers' forward)
        self.fast: Any = (build_fast_forward(model, self.context_length)
                          if self.config.fast_forward else None)
        if self.fast is not None and self.config.compile:
            from neocloud.serving.textgen.compiled import compile_forward

            self.fast = compile_forward(self.fast)
        #: matrix products whose weights were prepacked (bfloat16 on CPU; see .linear):
        #: those of the fast forward, else the model's linear layers
        self.packed_linears = (self.fast.packed if self.fast is not None
                               else pack_linears(model, device))
        self.eos_ids = _eos_ids(model, tokenizer)
        try:
            names = set(inspect.signature(model.forward).parameters)
        except (AttributeError, TypeError, ValueError):
            names = set()
        self._cache_arg = "cache" if "cache" in names else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in names else None
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        layers = int(cfg.num_hidden_layers)
        dtype = next(model.parameters()).dtype
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * torch.empty(
            (), dtype=dtype).element_size()
        budget = self.config.kv_budget_tokens
        if budget is None:
            budget = int(_available_memory_bytes(device) * DEFAULT_KV_MEMORY_FRACTION
                         ) // self.bytes_per_token
        self.kv_budget_tokens = int(budget)
        prefix = self.config.prefix_cache_tokens
        if prefix is None:
            prefix = int(self.kv_budget_tokens * DEFAULT_PREFIX_CACHE_FRACTION)
        #: prompt prefixes already prefilled (engine thread only; see .prefix)
        self.prefix = PrefixCache(prefix)
        self.cache = SlotCache(layers, kv_heads, head_dim, dtype, device)
        self._cache_shape = (layers, kv_heads, head_dim, dtype, device)
        self.on_step = on_step
        self.steps = 0  # engine steps run (a counter)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.ledger: collections.OrderedDict[str, Usage] = collections.OrderedDict()
        self.generated_tokens = 0   # all tokens sampled (a counter)
        self.prompt_tokens = 0      # prompt tokens of submitted requests (a counter)
        self.preemptions = 0
        self.metrics = EngineMetrics()
        self._rows: list[_Seq] = []  # row -> sequence
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._chunked: list[_Chunked] = []  # prompts being prefilled in chunks, oldest first
        self._inbox: list[tuple[str, _Request]] = []
        self._cv = threading.Condition()
        self._order = 0
        self._threads: ThreadChooser | None = None  # set on the engine thread (_loop)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="textgen", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> int:
        """Requests with sequences in the batch."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Requests queued for admission (new or preempted)."""
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Allocated KV slots / budget (0..1)."""
        return min(1.0, self.cache.allocated_tokens / max(1, self.kv_budget_tokens))

    @property
    def tokens_in_flight(self) -> int:
        """Prompt tokens plus tokens generated so far of the running requests (each
        choice's own tokens; the prompt once per request)."""
        return sum(len(r.prompt) + sum(len(q.tokens) for q in list(r.seqs))
                   for r in list(self._running))

    def render_metrics(self) -> bytes:
        """The engine series of :mod:`neocloud.serving.engine_metrics`."""
        return self.metrics.render(
            running=self.running, waiting=self.waiting, kv_usage=self.kv_usage,
            prompt_tokens=self.prompt_tokens, generation_tokens=self.generated_tokens,
            preemptions=self.preemptions, tokens_in_flight=self.tokens_in_flight,
            prefix_cache_queries=self.prefix.queries, prefix_cache_hits=self.prefix.hits)

    def release_model_layers(self) -> int:
        """Drop the transformers model's decoder layers once the engine's own forward
        (:mod:`.llama`) holds their weights: fused q/k/v and gate/up products are copies,
        and so is every packed weight of a bfloat16 CPU model, so without this a replica
        keeps the layers' weights twice. Afterwards the model's own ``forward`` cannot
        run; only this engine serves it. Returns the bytes of layer weights no longer
        referenced by the model (freed unless the engine's forward shares them: a plain
        float32 product keeps its weight's storage). Returns 0, and drops nothing, when the
        transformers forward runs (it needs them)."""
        import torch

        if self.fast is None:
            return 0
        base = self.model.model
        dropped = sum(p.numel() * p.element_size() for p in base.layers.parameters())
        base.layers = torch.nn.ModuleList()
        return dropped

    def close(self) -> None:
        """Stop the engine thread (pending requests end with an error)."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

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

    def check(self, prompt_ids: list[int], max_tokens: int | None, default_max: int | None,
              n: int = 1) -> int:
        """The effective ``max_tokens`` for a prompt of ``n`` choices.

        ``default_max`` None means "up to the context length" (and, for the default
        only, no more than the KV budget allows).

        Raises:
            InvalidRequest: empty prompt, prompt + ``max_tokens`` beyond the context, or a
                request that could never fit in the KV budget (``kv_cache_exceeded``).
        """
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        p = len(prompt_ids)
        room = self.context_length - p
        if room < 1:
            raise InvalidRequest(
                f"the prompt has {p} tokens; this model's context is "
                f"{self.context_length} tokens", param="messages", code="context_length_exceeded")
        if max_tokens is None:
            out = room if default_max is None else min(default_max, room)
            if default_max is None:  # shrink the implicit limit to what the cache can hold
                rows = -(-n // ROW_BLOCK) * ROW_BLOCK
                fit = (self.kv_budget_tokens // rows) // COL_BLOCK * COL_BLOCK - p
                out = min(out, fit)
            if out < 1 or slots_needed(n, p, out) > self.kv_budget_tokens:
                raise self._never_fits(n, p, max(out, 1), "messages")
            return out
        if max_tokens > room:
            raise InvalidRequest(
                f"max_tokens {max_tokens} + prompt {p} tokens exceeds this "
                f"model's context of {self.context_length} tokens", param="max_tokens",
                code="context_length_exceeded")
        if slots_needed(n, p, max_tokens) > self.kv_budget_tokens:
            raise self._never_fits(n, p, max_tokens, "max_tokens")
        return max_tokens

    def _never_fits(self, n: int, p: int, m: int, param: str) -> InvalidRequest:
        return InvalidRequest(
            f"{n} choice(s) of {p} prompt + {m} output tokens need "
            f"{slots_needed(n, p, m)} KV-cache slots; this replica has "
            f"{self.kv_budget_tokens}", param=param, code="kv_cache_exceeded")

    # ------------------------------------------------------------------ requests
    def usage(self, request_id: str) -> Usage | None:
        """The engine's count for a request id (running or among the last
        :data:`LEDGER_SIZE` finished), else ``None``."""
        return self.ledger.get(request_id)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[list[Delta]]:
        """Yield, after every step that gave text, the deltas of this request's choices.

        Each choice ends with a delta carrying ``finish_reason`` (``stop`` for EOS or a
        stop string, ``length`` at ``max_tokens``) and its generated token count. Leaving
        the iteration early cancels the request (its rows are freed at the next step).

        Raises:
            RuntimeError: the engine failed on a model step (the message says why).
        """
        loop = asyncio.get_running_loop()
        rid = request_id or f"gen-{id(params)}-{time.monotonic_ns()}"
        req = _Request(rid, list(prompt_ids), params, loop, asyncio.Queue(),
                       Usage(len(prompt_ids)))
        for i in range(params.n):
            req.seqs.append(_Seq(req, i, IncrementalDecoder(self.tokenizer),
                                 StopFilter(list(params.stop)),
                                 make_generator(params.seed, i, self.device)))
        self._remember(rid, req.usage)
        with self._cv:
            if self._stopped:
                raise RuntimeError("the generation engine is stopped")
            self._inbox.append(("new", req))
            self._cv.notify()
        self.prompt_tokens += len(prompt_ids)
        started = time.perf_counter()
        first_at: float | None = None
        finished = False
        try:
            while True:
                item = await req.queue.get()
                if item is _END:
                    finished = True
                    if first_at is not None:
                        per_choice = max(len(s.tokens) for s in req.seqs)
                        if per_choice > 1:
                            self.metrics.tpot.observe(
                                (time.perf_counter() - first_at) / (per_choice - 1))
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise RuntimeError(f"generation failed: {item}") from item
                if first_at is None:
                    first_at = time.perf_counter()
                    self.metrics.ttft.observe(first_at - started)
                yield item
        finally:
            if not finished:
                with self._cv:
                    self._inbox.append(("cancel", req))
                    self._cv.notify()

    def _remember(self, rid: str, usage: Usage) -> None:
        self.ledger[rid] = usage
        self.ledger.move_to_end(rid)
        while len(self.ledger) > LEDGER_SIZE:
            self.ledger.popitem(last=False)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        elif usable_cpus() > 1:
            self._threads = ThreadChooser((1, usable_cpus()))
        while True:
            with self._cv:
                while not self._inbox and not self._rows and not self._waiting \
                        and not self._chunked and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    inbox, self._inbox = self._inbox, []
                    break
                inbox, self._inbox = self._inbox, []
            for kind, req in inbox:
                if kind == "new":
                    req.waiting = True
                    self._waiting.append(req)
                elif not req.done:
                    req.cancelled = True
                    self._finish_request(req, None)
            try:
                self._step()
            except Exception as exc:  # a failed step fails every request in it
                log.exception("generation step failed")
                for req in list(self._running) + list(self._waiting):
                    self._finish_request(req, exc)
                self._rows = []
                self._chunked = []
                self.cache.release()
        for req in list(self._running) + list(self._waiting) + [r for _, r in inbox]:
            self._finish_request(req, RuntimeError("the generation engine stopped"))

    def _emit(self, req: _Request, item: Any) -> None:
        """Hand ``item`` to the request's consumer. A consumer whose event loop is closed
        is gone: the request counts as cancelled (its rows are freed by the caller's
        bookkeeping or at the next step), and the engine thread carries on."""
        if req.cancelled:
            return
        try:
            req.loop.call_soon_threadsafe(req.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            req.cancelled = True
            with self._cv:
                self._inbox.append(("cancel", req))

    def _finish_request(self, req: _Request, error: BaseException | None) -> None:
        if req.done:
            return
        req.done = True
        for s in req.seqs:
            if s.row is not None:
                self._free_row(s)
        if any(s.prefilling for s in req.seqs):
            self._chunked = [c for c in self._chunked if c.seqs[0].req is not req]
            for s in req.seqs:
                s.prefilling = False
        if req.waiting:
            req.waiting = False
            try:
                self._waiting.remove(req)
            except ValueError:
                pass
        if req in self._running:
            self._running.remove(req)
        req.usage.finished = True
        self._emit(req, error if error is not None else _END)
        if not self._rows:
            self.cache.release()

    def _free_row(self, seq: _Seq) -> None:
        row = seq.row
        assert row is not None
        moved = self.cache.remove_row(row)
        if moved is not None:
            other = self._rows[moved]
            self._rows[row] = other
            other.row = row
        self._rows.pop()
        seq.row = None

    def _history(self, seq: _Seq) -> list[int]:
        return seq.req.prompt + seq.tokens

    def _step(self) -> None:
        """One engine step: admission, chunks and prefill, one decode (module doc)."""
        chunks, picked, longest, compute = self._admit()
        if chunks or picked:
            self._set_step_threads(len(self._rows) + len(picked))
        started: list[str] = []
        report = self.on_step is not None
        prefilled = 0
        for group, q in chunks:
            if self._prefill_chunk(group, q) and report:
                started.append(group.seqs[0].req.rid)
            prefilled += q
        if picked:
            self._prefill(picked, longest, compute)
            prefilled += compute * len(picked)
            if report:
                started.extend(dict.fromkeys(s.req.rid for s in picked))
        decoded: tuple[str, ...] = ()
        if self._rows:
            if report:
                decoded = tuple(s.req.rid for s in self._rows)
            if self._threads is not None and not chunks and not picked:
                self._timed_decode(self._threads)
            else:
                self._decode()
        self.steps += 1
        if self.on_step is not None:
            try:
                self.on_step(StepReport(self.steps, prefilled, len(chunks), tuple(started),
                                        decoded))
            except Exception:
                log.exception("on_step callback failed")

    def _timed_decode(self, chooser: ThreadChooser) -> None:
        """A decode-only step on the thread count ``chooser`` picks, timed for it (its
        forward and sampling, see :meth:`_decode`)."""
        import torch

        rows = len(self._rows)
        threads = chooser.pick(rows, measured=True)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        seconds = self._decode()
        if seconds is not None:
            chooser.record(rows, threads, seconds)

    def _set_step_threads(self, rows: int) -> None:
        """Before a step that prefills: the best thread count of its batch group."""
        import torch

        if self._threads is not None:
            threads = self._threads.best(rows)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)

    def _admit(self) -> tuple[list[tuple[_Chunked, int]], list[_Seq], int, int]:
        """Plan the step's prefill: ``(chunks to run as (prompt, tokens), sequences to
        prefill whole, their longest history, the tokens per row to compute)``; admitted
        requests leave the queue. A sequence whose history begins with a cached prefix
        (:mod:`.prefix`, kept in ``_Seq.hit``) computes only the rest, so the allowance
        and the choice of chunks count the tokens to compute, not the whole history."""
        cfg, budget = self.config, self.kv_budget_tokens
        allowance = cfg.max_prefill_tokens
        chunks: list[tuple[_Chunked, int]] = []
        for group in self._chunked:  # prompts under way first (they are older)
            if allowance <= 0:
                break
            q = min(group.remaining, allowance)
            chunks.append((group, q))
            allowance -= q
        # rows and room the prompts under way will take when they join
        base_rows = len(self._rows) + sum(len(g.seqs) for g in self._chunked)
        base_p = max((len(g.history) for g in self._chunked), default=0)
        base_h = max((g.horizon for g in self._chunked), default=0)
        picked: list[_Seq] = []
        longest = 0   # longest history to prefill whole
        compute = 0   # most tokens a row of the prefill computes (its history less its hit)
        horizon = 0   # most tokens any newcomer may still generate
        while self._waiting and allowance > 0:
            req = self._waiting[0]
            seqs = [s for s in req.seqs if s.finish is None and s.row is None
                    and not s.prefilling]
            busy = bool(base_rows or picked)
            rows = base_rows + len(picked) + len(seqs)
            histories = [self._history(s) for s in seqs]
            hist = [len(x) for x in histories]
            p = max([longest] + hist)
            h = max([horizon] + [req.params.max_tokens - len(s.tokens) for s in seqs])
            if busy and rows > cfg.max_num_seqs:
                break
            # the newcomers' whole runs must fit beside the batch as it is laid out now
            if busy and self.cache.tokens_after(
                    rows, max(p, base_p), max(h, base_h), budget, shrink=True) > budget:
                break
            hits = [self.prefix.peek(x) for x in histories]
            todo = [n - (hit.tokens if hit is not None else 0)
                    for n, hit in zip(hist, hits, strict=True)]
            if max(todo, default=0) > cfg.max_prefill_tokens:  # too long: in chunks
                self._take(req)
                for group in self._chunk_groups(seqs):
                    self._chunked.append(group)
                    if allowance > 0:
                        q = min(group.remaining, allowance)
                        chunks.append((group, q))
                        allowance -= q
                base_rows += len(seqs)
                base_p, base_h = max(base_p, max(hist)), max(base_h, h)
                continue
            # the first request of a step enters whole even when its choices' prompts
            # together pass the allowance (each fits it, or it went to chunks above):
            # otherwise a request with n choices could never enter
            q = max([compute] + todo)
            if picked and q * (len(picked) + len(seqs)) > allowance:
                break
            self._take(req)
            for s, hit in zip(seqs, hits, strict=True):
                s.hit = hit
            picked.extend(seqs)
            longest, compute, horizon = p, q, h
        return chunks, picked, longest, compute

    def _take(self, req: _Request) -> None:
        self._waiting.popleft()
        req.waiting = False
        if req not in self._running:
            self._running.append(req)

    def _chunk_groups(self, seqs: list[_Seq]) -> list[_Chunked]:
        """One chunked prefill for the fresh choices of a request (they share its prompt),
        one per preempted choice (each has its own history)."""
        fresh = [s for s in seqs if not s.tokens]
        sets = ([fresh] if fresh else []) + [[s] for s in seqs if s.tokens]
        groups = []
        for group in sets:
            for s in group:
                s.prefilling = True
            cache = SlotCache(*self._cache_shape, row_block=1)
            groups.append(_Chunked(group, self._history(group[0]), cache))
        return groups

    def _forward(self, input_ids: Any, q: int, cache: SlotCache | None = None) -> Any:
        import torch

        cache = cache or self.cache
        if self.fast is not None:
            with torch.inference_mode():
                return self.fast(input_ids, cache.mask(q), cache.positions(q), cache)
        kwargs: dict[str, Any] = {self._cache_arg: cache}
        if self._keep_arg:
            kwargs[self._keep_arg] = 1
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=cache.mask(q),
                             position_ids=cache.positions(q), use_cache=True, **kwargs)
        return out.logits[:, -1, :]

    def _prefill_chunk(self, group: _Chunked, q: int) -> bool:
        """Run the next ``q`` tokens of a prompt prefilled in chunks; on its last chunk
        its choices join the batch with their first token. True when they joined."""
        import torch

        side, c0 = group.cache, group.done
        if side.rows == 0:
            side.reserve(1, 0, len(group.history))
            side.add_rows([side.t])
        ids = torch.tensor([group.history[c0:c0 + q]], dtype=torch.long, device=self.device)
        side.set_window(0, 1, side.start[0] + c0)
        logits = self._forward(ids, q, side)
        side.t = side.start[0] + c0 + q
        group.done += q
        if group.remaining:
            return False
        self._chunked.remove(group)
        seqs, p = group.seqs, len(group.history)
        cache, budget = self.cache, self.kv_budget_tokens
        rows = len(self._rows) + len(seqs)
        shrink = cache.tokens_after(rows, p, 1, budget) > budget
        cache.reserve(rows, p, 1, budget, shrink)
        first = cache.add_rows([cache.t - p] * len(seqs))
        cache.load_rows(first, len(seqs), side, p)
        if not seqs[0].tokens:  # a fresh prompt (not a preempted choice's history)
            self.prefix.store(group.history, side, 0, side.start[0])
        side.release()
        for i, s in enumerate(seqs):
            self._order += 1
            s.order = self._order
            s.row = first + i
            s.prefilling = False
            self._rows.append(s)
        tokens = sample(logits.expand(len(seqs), -1), [s.req.params for s in seqs],
                        [s.gen for s in seqs])
        self._advance(seqs, tokens)
        return True

    def _prefill(self, seqs: list[_Seq], longest: int, q: int) -> None:
        """Prefill ``seqs`` together: each row holds its whole history (the longest has
        ``longest`` tokens) ending at ``t``, and the forward computes the last ``q``
        columns of every row (left padding where a history is shorter). The columns
        left of those come from the row's cached prefix (``_Seq.hit``: ``q`` is at least
        each history less its hit); a computed column that was also cached is written
        again with the same keys and values. Afterwards each fresh prompt is offered to
        the prefix cache."""
        import torch

        cache = self.cache
        rows, budget = len(self._rows) + len(seqs), self.kv_budget_tokens
        shrink = cache.tokens_after(rows, longest, 1, budget) > budget
        cache.reserve(rows, longest, 1, budget, shrink)
        t = cache.t
        hist = [self._history(s) for s in seqs]
        first = cache.add_rows([t - len(h) for h in hist])
        for i, (s, h) in enumerate(zip(seqs, hist, strict=True)):
            self._order += 1
            s.order = self._order
            s.row = first + i
            self._rows.append(s)
            reused = max(0, len(h) - q)
            if reused:
                assert s.hit is not None and s.hit.tokens >= reused
                s.hit.copy_into(cache, first + i, t - len(h), reused)
            self.prefix.count(len(h), reused, s.hit)
            s.hit = None
        ids = torch.tensor([[self.pad_id] * (q - len(h)) + h[max(0, len(h) - q):]
                            for h in hist], dtype=torch.long, device=self.device)
        cache.set_window(first, first + len(seqs), t - q)
        logits = self._forward(ids, q)
        stored: set[int] = set()
        for i, (s, h) in enumerate(zip(seqs, hist, strict=True)):
            if not s.tokens and id(s.req) not in stored:  # a fresh prompt, once a request
                stored.add(id(s.req))
                self.prefix.store(h, cache, first + i, t - len(h))
        tokens = sample(logits, [s.req.params for s in seqs], [s.gen for s in seqs])
        self._advance(seqs, tokens)

    def _decode(self) -> float | None:
        """Decode one token for every running row. Returns the seconds of its forward
        and sampling (what the thread count changes; not the cache's bookkeeping before
        it, which may move the whole cache once after a prefill), ``None`` when every
        row was preempted."""
        import torch

        cache, budget = self.cache, self.kv_budget_tokens
        shrink = cache.tokens_after(len(self._rows), 0, 1, budget) > budget
        while shrink and self._rows and cache.tokens_after(
                len(self._rows), 0, 1, budget, shrink=True) > budget:
            self._preempt()
        if not self._rows:
            return None
        cache.reserve(len(self._rows), 0, 1, budget, shrink)
        seqs = list(self._rows)
        t0 = time.perf_counter()
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.device)
        cache.set_window(0, len(seqs), cache.t)
        logits = self._forward(ids, 1)
        cache.t += 1
        tokens = sample(logits, [s.req.params for s in seqs], [s.gen for s in seqs])
        seconds = time.perf_counter() - t0
        self._advance(seqs, tokens)
        return seconds

    def _preempt(self) -> None:
        victim = max(self._rows, key=lambda s: s.order)
        self._free_row(victim)
        self.preemptions += 1
        req = victim.req
        if not req.waiting:
            req.waiting = True
            self._waiting.appendleft(req)
        if all(s.row is None for s in req.seqs) and req in self._running:
            self._running.remove(req)
        if not self._rows:
            self.cache.release()

    def _advance(self, seqs: list[_Seq], tokens: list[int]) -> None:
        out: dict[int, tuple[_Request, list[Delta]]] = {}
        for s, tok in zip(seqs, tokens, strict=True):
            req = s.req
            s.tokens.append(tok)
            req.usage.completion_tokens += 1
            self.generated_tokens += 1
            params = req.params
            finish = None
            if tok in self.eos_ids:
                text, finish = s.decoder.flush(), "stop"
            else:
                text = s.decoder.push(tok)
            emit, hit = s.stops.feed(text)
            if hit:
                finish = "stop"
            elif finish is None and len(s.tokens) >= params.max_tokens:
                tail, _ = s.stops.feed(s.decoder.flush(whole_chars_only=True))
                emit += tail
                finish = "length"
            if finish is not None and not hit:
                emit += s.stops.flush()
            if finish is not None:
                s.finish = finish
                self._free_row(s)
            if emit or finish:
                entry = out.setdefault(id(req), (req, []))
                entry[1].append(Delta(s.index, emit, finish, len(s.tokens) if finish else 0))
        for req, deltas in out.values():
            self._emit(req, deltas)
            if all(s.finish for s in req.seqs):
                self._finish_request(req, None)
        if not self._rows:
            self.cache.release()


async def run_to_end(gen: TextGenerator, prompt_ids: list[int], params: SamplingParams,
                     request_id: str | None = None) -> tuple[list[str], list[str], int]:
    """Generate fully; returns ``(text per choice, finish_reason per choice, generated
    tokens over all choices)``."""
    texts = [""] * params.n
    finish = ["length"] * params.n
    tokens = 0
    async for deltas in gen.generate(prompt_ids, params, request_id):
        for d in deltas:
            texts[d.index] += d.text
            if d.finish_reason:
                finish[d.index] = d.finish_reason
                tokens += d.tokens
    return texts, finish, tokens
